"""The standard Python gRPC clients against the real ksserve binary: grpcio's health checking
client (Check and Watch) and server reflection, through which ServerInfo is called without any
generated code."""
import json
import os
import signal
import subprocess
import tempfile
import time

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


@pytest.fixture
def server():
    binary = os.environ["KSSERVE_BINARY"]
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "ports.json")
        log = open(os.path.join(tmp, "server.log"), "w+")
        proc = subprocess.Popen([binary, "--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                                 f"--port_file={port_file}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(port_file):
                assert proc.poll() is None, f"ksserve exited: {open(log.name).read()}"
                assert time.monotonic() < deadline, "ksserve did not start"
                time.sleep(0.02)
            ports = json.load(open(port_file))
            with grpc.insecure_channel(f"127.0.0.1:{ports['grpc_port']}") as channel:
                yield proc, channel
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def test_health_check_and_watch(server):
    proc, channel = server
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as error:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    proc.send_signal(signal.SIGTERM)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(StopIteration):  # the stream ends cleanly (OK) after NOT_SERVING
        next(watch)
    assert proc.wait(timeout=30) == 0


def test_reflection_lists_services_and_serves_descriptors(server):
    _, channel = server
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    services = {s.name for s in next(responses).list_services_response.service}
    assert {"ksserve.v1.KsServe", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services

    # Call ServerInfo with message types built from reflected descriptors alone.
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName("ksserve.v1.KsServe").FindMethodByName("ServerInfo")
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary("/ksserve.v1.KsServe/ServerInfo", request_serializer=request_cls.SerializeToString,
                               response_deserializer=response_cls.FromString)
    info = call(request_cls(), timeout=10)
    assert info.build.version
    assert info.build.torch_version.startswith("2.11.0")
    assert info.devices[0].kind == pool.FindEnumTypeByName("ksserve.v1.Device.Kind").values_by_name["KIND_CPU"].number

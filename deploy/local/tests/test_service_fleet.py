"""The fleet's environment: a service reaches its peers where the fleet runs them."""

from __future__ import annotations

from lineloop.registry.settings import RegistrySettings
from lineloop.stack.config import StackConfig
from lineloop.stack.services import ServiceFleet
from lineloop.training.settings import TrainingSettings


def test_services_call_their_peers_on_the_ports_the_fleet_moved_them_to(tmp_path, monkeypatch):
    # Tests and `make chaos` run the fleet on free ports; the settings' defaults are the catalogue's.
    monkeypatch.setenv("LINELOOP_MONITOR_GRPC_PORT", "61056")
    monkeypatch.setenv("LINELOOP_REGISTRY_GRPC_PORT", "61054")
    fleet = ServiceFleet(StackConfig.on_free_ports(tmp_path / "state"))

    with monkeypatch.context() as m:
        for key, value in fleet.env("registry").items():
            m.setenv(key, value)
        assert RegistrySettings().monitor_grpc == "127.0.0.1:61056"
    with monkeypatch.context() as m:
        for key, value in fleet.env("training").items():
            m.setenv(key, value)
        assert TrainingSettings().registry_grpc == "127.0.0.1:61054"

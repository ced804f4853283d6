"""devices.py: the "auto" fallback order and validation of explicit device names."""
from __future__ import annotations

import pytest
import torch

from SGPSAMLib import devices
from SGPSAMLib.devices import available_devices, resolve_device


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"),
    (True, False, "cuda"),
    (False, True, "mps"),
    (False, False, "cpu"),
])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(devices, "_mps_available", lambda: mps)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device() == torch.device(expected)


def test_auto_on_this_machine_is_usable():
    device = resolve_device("auto")
    torch.zeros(2, device=device)  # would raise if the device were not usable
    assert str(device).split(":")[0] in {name.split(":")[0] for name in available_devices()}


@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu ", torch.device("cpu")])
def test_cpu_is_always_available(name):
    assert resolve_device(name) == torch.device("cpu")


def test_cuda_index_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"'cuda:1'.*available.*cuda:0"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["cuda", "cuda:1", "mps"])
def test_unavailable_device_names_it_and_lists_available(no_accelerator, name):
    with pytest.raises(ValueError) as info:
        resolve_device(name)
    message = str(info.value)
    assert repr(name) in message
    assert "['cpu']" in message


@pytest.mark.parametrize("bad", ["gpu", "tpu0", "", 3, None])
def test_bad_device_names(bad):
    with pytest.raises(ValueError, match="device"):
        resolve_device(bad)


def test_available_devices_lists_cpu_last(no_accelerator):
    assert available_devices() == ["cpu"]

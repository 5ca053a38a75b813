"""The run layer: files written atomically with the user's mode, outputs only where asked, batch-invariant sampling."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from diffusionlens import run
from diffusionlens.training import TrainConfig, train

TINY = {"net": {"kind": "mlp", "data_shape": [2], "width": 32, "depth": 1, "emb_dim": 32}, "batch_size": 64,
        "warmup_steps": 5, "log_every": 10, "ckpt_every": 0}


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "ring"
    with torch.random.fork_rng(devices=[]):
        train(TrainConfig.from_dict({**TINY, "dataset": "ring8", "steps": 20}), path, progress=False)
    return run.open_run(path)


def test_save_json_and_tensors_are_atomic_with_the_users_mode(tmp_path):
    mask = os.umask(0o027)
    try:
        run.save_json(tmp_path / "a.json", {"x": 1})
        run.save_tensors(tmp_path / "b.safetensors", {"x": torch.ones(3)})
    finally:
        os.umask(mask)
    for f in ("a.json", "b.safetensors"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o640
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.safetensors"]


def test_output_only_into_an_existing_directory(tmp_path):
    assert run.output_stem(None, tmp_path / "d") == tmp_path / "d"
    assert run.output_stem(str(tmp_path / "x.png"), tmp_path / "d") == tmp_path / "x"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run.output_stem(str(tmp_path / "new" / "x"), tmp_path / "d")
    assert not (tmp_path / "new").exists()
    run.check_writable(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run.check_writable(tmp_path / "new")


def test_find_and_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="'nowhere' not found"):
        run.find_run("nowhere", runs=tmp_path)
    with pytest.raises(ValueError, match="no checkpoint"):
        run.open_run(tmp_path)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ddpm"])
def test_generate_does_not_depend_on_n_or_batch_size(ring_run, sampler):
    """Sample i is a function of (seed, i): the same for any n and batch size, deterministic or stochastic."""
    den, cfg = ring_run.denoiser, ring_run.config
    a, _, _ = run.generate(den, cfg, 7, sampler=sampler, steps=4, seed=3)
    b, _, _ = run.generate(den, cfg, 20, sampler=sampler, steps=4, seed=3, batch_size=6)
    c, _, _ = run.generate(den, cfg, 7, sampler=sampler, steps=4, seed=4)
    # equal noise, so equal up to float32 rounding of the network, which may block its matrix products
    # differently for another batch size; a different draw would differ by O(1)
    torch.testing.assert_close(a, b[:7], rtol=1e-5, atol=1e-5)
    assert (a - c).abs().max() > 0.01


def test_likelihood_and_round_trip_write_their_files(ring_run):
    out = run.likelihood(ring_run, n=6)
    assert out["log_likelihood"]["n"] == 6 and math.isfinite(out["log_likelihood"]["mean"])
    rt = run.round_trip(ring_run, n=5, steps=16)
    assert rt["n"] == 5 and rt["relative_error_mean"] < 0.2
    for f in ("likelihood.json", "encode.json", "latents.safetensors"):
        assert (ring_run.path / f).is_file()



def test_one_json_reader_and_one_writability_check(tmp_path, monkeypatch):
    from diffusionlens._util import check_writable, read_json

    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "ok.json", "config") == {"a": 1}
    with pytest.raises(FileNotFoundError, match=r"config '.*nope.json' not found: train first"):
        read_json(tmp_path / "nope.json", "config", hint=": train first")
    (tmp_path / "torn.json").write_text('{"a": ')
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_json(tmp_path / "torn.json", "config")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        read_json(tmp_path / "list.json", "config")
    check_writable(tmp_path / "new" / "deeper", missing_ok=True)  # checked through its nearest existing parent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.json", "ok.json", "torn.json"]  # probe removed
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="is not a directory"):
        check_writable(tmp_path / "file", missing_ok=True)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False)  # permission bits say no (root passes chmod)
    with pytest.raises(PermissionError, match=f"cannot write the run directory {tmp_path}: {tmp_path} is not"):
        check_writable(tmp_path, what="the run directory")

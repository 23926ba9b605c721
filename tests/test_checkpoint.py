"""Checkpoints round-trip exactly and bad files fail with a message that names the problem."""

import pytest
import torch

from painnfx.model.checkpoint import VERSION, CheckpointError, load_checkpoint, save_checkpoint
from painnfx.model.painn import PaiNN, PaiNNConfig
from strategies import SMALL_CONFIG


def _model():
    return PaiNN(PaiNNConfig(**SMALL_CONFIG, seed=3, elements=[29, 13], shared_filters=True))


def test_round_trip(tmp_path):
    model = _model()
    model.atomref[29] = -1.25
    path = tmp_path / "m.pt"
    save_checkpoint(model, path, metadata={"note": "test"})
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.metadata == {"note": "test"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_loads_with_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint(_model(), path)
    seen = {}
    real = torch.load

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(path)
    assert seen.get("weights_only") is True


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(_model(), path)  # a whole pickled module, not weights
    with pytest.raises(CheckpointError, match="corrupt or not a weights-only"):
        load_checkpoint(path)


def test_foreign_and_newer_files(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a painnfx PaiNN checkpoint"):
        load_checkpoint(path)
    save_checkpoint(_model(), path)
    payload = torch.load(path, weights_only=True)
    payload["version"] = VERSION + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"version {VERSION + 1}"):
        load_checkpoint(path)


def test_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(_model(), path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["n_atom_basis"] = 16
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_float64_model_round_trips_in_float64(tmp_path):
    """A float64 model (e.g. fitted in float64) is not rounded to float32 by save + load, nor by
    the bytes embedded in engine model files."""
    from painnfx.model.checkpoint import checkpoint_bytes

    model = _model().double()
    with torch.no_grad():
        model.embedding.weight.add_(1e-12)  # below float32 resolution
    save_checkpoint(model, tmp_path / "m.pt")
    for loaded in (load_checkpoint(tmp_path / "m.pt"), load_checkpoint(checkpoint_bytes(model))):
        for k, v in model.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k

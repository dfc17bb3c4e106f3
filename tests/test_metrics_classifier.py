import torch

from lightning_infdiff.metrics import classifier as clf


def test_prepare_any_size_and_channels():
    x = torch.rand(3, 3, 50, 70) * 2 - 1
    out = clf.prepare(x)
    assert out.shape == (3, 1, 32, 32)
    const = torch.full((1, 1, 64, 64), 0.25)
    assert torch.allclose(clf.prepare(const), torch.full((1, 1, 32, 32), 0.25), atol=1e-6)


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_INFDIFF_CACHE", str(tmp_path))
    calls = []

    def fake_train(name):
        calls.append(name)
        torch.manual_seed(0)
        return clf.SmallClassifier(10), 0.5

    monkeypatch.setattr(clf, "train_classifier", fake_train)
    m1, a1 = clf.load_classifier("digits")
    m2, a2 = clf.load_classifier("digits")
    assert calls == ["digits"] and a1 == a2 == 0.5
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.equal(m1(x), m2(x))
    pred, conf = clf.classify(m2, x)
    assert pred.shape == (4,) and bool(((conf > 0) & (conf <= 1)).all())


def test_ink_windows_cut_the_square_holding_the_digit_from_wide_images():
    from lightning_infdiff.metrics.classifier import ink_windows

    x = -torch.ones(2, 1, 4, 8)
    x[0, 0, :, 5:7] = 1.0
    x[1, 0, 1:3, 0] = 0.5
    w = ink_windows(x)
    assert w.shape == (2, 1, 4, 4)
    assert float((w[0] + 1).sum()) == float((x[0] + 1).sum())  # all of the ink is inside
    assert torch.equal(w[1], x[1, :, :, 0:4])
    square = torch.randn(3, 1, 4, 4)
    assert ink_windows(square) is square

"""The returns plot shows inline in a Jupyter kernel, refreshed at each eval; elsewhere nothing
happens and IPython is never imported."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from fastdqn import train
from fastdqn.core.logger import InlineImage


class FakeHandle:
    def __init__(self, shown: list) -> None:
        self.shown = shown

    def update(self, image) -> None:
        self.shown.append(("update", image))


def fake_ipython(monkeypatch, kernel: bool) -> list:
    """Install a fake IPython in sys.modules (a kernel shell or a terminal one); return its log."""
    shown: list = []
    shell = types.SimpleNamespace(kernel=object()) if kernel else types.SimpleNamespace()
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    ipython.version_info = (9, 0, 0)  # matplotlib reads it when IPython is loaded
    display_mod = types.ModuleType("IPython.display")

    class Image:
        def __init__(self, data: bytes, format: str) -> None:
            self.data, self.format = data, format

    def display(image, display_id=False):
        assert display_id is True
        shown.append(("display", image))
        return FakeHandle(shown)

    display_mod.Image, display_mod.display = Image, display
    ipython.display = display_mod
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_mod)
    return shown


def tiny_train(run_dir: Path):
    return train(env_id="CartPole-v1", num_envs=4, vector="sync", total_timesteps=2000,
                 learning_starts=500, eval_every=1000, eval_episodes=2, solve_episodes=2,
                 eval_envs=2, checkpoint_every=0, progress=False, run_dir=str(run_dir))


def test_train_in_a_kernel_shows_the_plot_and_refreshes_it(monkeypatch, tmp_path) -> None:
    shown = fake_ipython(monkeypatch, kernel=True)
    monkeypatch.setattr("fastdqn.runtime.run.PLOT_EVERY_S", 0.0)  # redraw at every eval
    result = tiny_train(tmp_path / "run")
    # one display at the first eval, then in place: the second eval and the end of the run
    assert [kind for kind, _ in shown] == ["display", "update", "update"]
    assert all(img.format == "png" and img.data[:8] == b"\x89PNG\r\n\x1a\n" for _, img in shown)
    assert shown[-1][1].data == (result.run_dir / "returns.png").read_bytes()


def test_plot_is_redrawn_at_most_every_plot_every_s(monkeypatch, tmp_path) -> None:
    shown = fake_ipython(monkeypatch, kernel=True)
    result = tiny_train(tmp_path / "run")  # two evals within a few seconds: only the end draws
    assert [kind for kind, _ in shown] == ["display"]
    assert shown[0][1].data == (result.run_dir / "returns.png").read_bytes()


def test_terminal_ipython_shows_nothing(monkeypatch, tmp_path) -> None:
    shown = fake_ipython(monkeypatch, kernel=False)
    tiny_train(tmp_path / "run")
    assert shown == []


class ImportRecorder:
    """A meta-path finder that only notes which top-level modules are asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        self.asked.add(name.split(".")[0])
        return None


def test_plain_python_never_imports_ipython(monkeypatch, tmp_path) -> None:
    for name in [m for m in sys.modules if m == "IPython" or m.startswith("IPython.")]:
        monkeypatch.delitem(sys.modules, name)
    recorder = ImportRecorder()
    monkeypatch.setattr(sys, "meta_path", [recorder, *sys.meta_path])
    tiny_train(tmp_path / "run")
    assert "IPython" not in recorder.asked
    assert "IPython" not in sys.modules


def test_a_failing_display_warns_once_and_training_goes_on(monkeypatch, tmp_path, capsys) -> None:
    fake_ipython(monkeypatch, kernel=True)

    def broken(image, display_id=False):
        raise RuntimeError("no frontend")

    monkeypatch.setattr(sys.modules["IPython.display"], "display", broken)
    png = tmp_path / "r.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    inline = InlineImage()
    inline.show(png)
    inline.show(png)
    err = capsys.readouterr().err
    assert err == (f"cannot show the returns plot inline (RuntimeError: no frontend); "
                   f"it is saved in {png}\n")


@pytest.mark.parametrize("kernel", [True, False])
def test_inline_image_needs_no_matplotlib_backend(monkeypatch, tmp_path, kernel) -> None:
    shown = fake_ipython(monkeypatch, kernel=kernel)
    png = tmp_path / "r.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    InlineImage().show(png)
    assert len(shown) == int(kernel)

"""aim.train: it learns what is there, stops early keeping the best weights, and resumes exactly."""

import ctypes
import io
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import aim.train
from aim.data import CTRData
from aim.models import build_model
from aim.train import TrainConfig, Trainer, bf16_is_native, evaluate, fit
from tasks import encode, generate, ingest
from tasks.config import parse_params, read_yaml
from tasks.training import load_encoded
from tests.conftest import ROOT, needs_shared, project_params

PLANTED = {"rows": 40000, "seed": 11, "numeric_fields": 2, "categorical_fields": 6, "planted_pairs": 3,
           "planted_triples": 0, "interaction_strength": 1.5, "out_dir": "data/raw/synthetic"}


def encoded_in(params) -> tuple[list, dict[str, CTRData]]:
    for stage in (ingest, encode):
        stage.run(params)
    return load_encoded()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, dict[str, CTRData]]:
    """A small synthetic log (2 numeric + 6 categorical fields, 3 planted pairs), ingested and encoded."""
    raw = read_yaml((ROOT / "params.yaml").read_text())
    raw["generate"] = PLANTED
    columns = raw["datasets"]["synthetic"]["columns"]
    raw["datasets"]["synthetic"]["columns"] = {"label": columns["label"], "I{1..2}": columns["I{1..13}"],
                                               "C{1..6}": "categorical", "M1": columns["M1"]}
    params = parse_params(raw)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("planted"))
        generate.run(params)
        return encoded_in(params)


def test_fm_and_deepfm_beat_logistic_regression_on_planted_interactions(planted) -> None:
    fields, data = planted
    auc = {}
    for name, extra in (("lr", {}), ("fm", {"embedding_l2": 1e-3}),
                        ("deepfm", {"embedding_l2": 1e-3, "hidden_units": [64, 64], "dropout": 0.1})):
        torch.manual_seed(0)
        model = build_model(name, fields, embedding_dim=8, **extra)
        fit(model, data["train"], data["valid"], TrainConfig(epochs=15, batch_size=1024, lr=3e-3, seed=1))
        auc[name] = evaluate(model, data["test"])["auc"]
    print(auc)
    assert auc["fm"] > auc["lr"] + 0.03, auc
    assert auc["deepfm"] > auc["lr"] + 0.03, auc


def small_deepfm(fields: list, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("deepfm", fields, embedding_dim=4, hidden_units=[16], dropout=0.3)


def test_resumed_run_ends_where_an_uninterrupted_run_ends(planted) -> None:
    fields, data = planted
    train, valid = data["train"].slice(0, 8000), data["valid"]
    config = TrainConfig(epochs=4, batch_size=512, lr=3e-3, patience=10, seed=5)

    whole = small_deepfm(fields, 0)
    full = fit(whole, train, valid, config)

    class StopAfter:
        def __init__(self, epoch: int) -> None:
            self.epoch, self.saved = epoch, None

        def on_epoch_end(self, trainer: Trainer, record) -> None:
            if record.epoch == self.epoch:
                buffer = io.BytesIO()  # as a checkpoint file would hold it
                torch.save(trainer.state_dict(), buffer)
                self.saved = buffer.getvalue()
                trainer.stop = True

    stopper = StopAfter(2)
    first = fit(small_deepfm(fields, 0), train, valid, config, callbacks=[stopper])
    assert first.epochs_run == 2

    resumed = Trainer(small_deepfm(fields, 99), config)  # other initial weights: the checkpoint must win
    resumed.load_state_dict(torch.load(io.BytesIO(stopper.saved), weights_only=False))
    result = resumed.fit(train, valid)
    assert result.epochs_run == full.epochs_run == 4
    assert [r.valid_auc for r in result.history] == [r.valid_auc for r in full.history]
    for (name, a), b in zip(whole.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_early_stopping_keeps_the_best_weights(planted) -> None:
    fields, data = planted
    torch.manual_seed(0)
    model = build_model("fm", fields, embedding_dim=16)  # no regularisation, large steps: it will overfit
    result = fit(model, data["train"], data["valid"], TrainConfig(epochs=30, batch_size=256, lr=0.02, patience=2))
    assert result.stopped_early and result.epochs_run == result.best_epoch + 2
    assert result.history[-1].valid_auc < result.best_valid_auc
    assert evaluate(model, data["valid"])["auc"] == pytest.approx(result.best_valid_auc, abs=1e-12)
    without_gain = sum(not r.improved for r in result.history)
    assert result.history[-1].lr == pytest.approx(max(0.02 * 0.1**without_gain, 1e-6))  # decayed on each


def test_min_epochs_hold_off_patience_and_the_decay(planted) -> None:
    """The same overfitting run: with min_epochs 8 it trains 8 epochs at its learning rate whatever the validation
    AUC does, and only then may patience stop it; the best weights are still the ones kept."""
    fields, data = planted
    torch.manual_seed(0)
    model = build_model("fm", fields, embedding_dim=16)
    config = TrainConfig(epochs=30, batch_size=256, lr=0.02, patience=2, min_epochs=8)
    result = fit(model, data["train"], data["valid"], config)
    assert any(not r.improved for r in result.history[:8])  # the AUC fell inside the 8 epochs, and nothing acted
    assert [r.lr for r in result.history[:8]] == [0.02] * 8
    assert result.stopped_early and result.epochs_run == max(result.best_epoch, 8) + 2
    assert evaluate(model, data["valid"])["auc"] == pytest.approx(result.best_valid_auc, abs=1e-12)


def test_lr_decay_patience_lets_a_bad_epoch_pass_at_the_full_rate(planted) -> None:
    """The same overfitting run with lr_decay_patience 2 (and patience 3): the rate is cut on the 2nd epoch in a row
    without gain, not on the 1st, and training stops on the 3rd."""
    fields, data = planted
    torch.manual_seed(0)
    model = build_model("fm", fields, embedding_dim=16)
    config = TrainConfig(epochs=30, batch_size=256, lr=0.02, patience=3, lr_decay_patience=2)
    result = fit(model, data["train"], data["valid"], config)
    lr, bad = 0.02, 0
    for record in result.history:
        bad = 0 if record.improved else bad + 1
        if bad == 2:
            lr *= 0.1
        assert record.lr == pytest.approx(lr), record.epoch
    first_bad = next(i for i, r in enumerate(result.history) if not r.improved)
    assert result.history[first_bad].lr == result.history[first_bad - 1].lr  # the first dip passed undecayed
    assert result.stopped_early and result.epochs_run == result.best_epoch + 3


def test_a_validation_split_with_one_class_is_refused(planted) -> None:
    """Early stopping follows the validation AUC, which one class leaves undefined: an error, not a NaN."""
    fields, data = planted
    valid = data["valid"]
    one_class = CTRData(valid.fields, valid.single, valid.multi, torch.zeros_like(valid.label))
    with pytest.raises(ValueError, match=r"validation split holds one class only \(all \d+ rows labelled 0\)"):
        fit(build_model("fm", fields), data["train"], one_class, TrainConfig(epochs=1))


def test_a_trainer_uses_torchs_fused_adam_on_cpu_and_the_foreach_one_elsewhere(planted) -> None:
    from aim.models import adam

    fields, _ = planted
    trainer = Trainer(build_model("fm", fields, embedding_dim=4), TrainConfig(epochs=1))
    assert [o.defaults["fused"] for o in trainer.optimizers] == [True]
    assert adam([torch.nn.Parameter(torch.ones(3, device="meta"))], 1e-3).defaults["fused"] is None


def test_a_trainer_turns_mkls_dynamic_thread_count_off(planted) -> None:
    import ctypes

    from aim.train import fix_mkl_threads

    library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    if not hasattr(library, "mkl_serv_get_dynamic"):
        pytest.skip("this torch build has no MKL")
    library.MKL_Set_Dynamic(ctypes.c_int(1))  # as every process starts (MKL_DYNAMIC unset)
    assert library.mkl_serv_get_dynamic() == 1
    fields, _ = planted
    Trainer(build_model("fm", fields, embedding_dim=4), TrainConfig(epochs=1))
    assert library.mkl_serv_get_dynamic() == 0 and fix_mkl_threads()


MALLOC_OF_8_MB = """
import ctypes, sys
from aim.train import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "keep":
    assert keep_freed_memory()
elif sys.argv[1] == "predict":  # scoring in a fresh process, as tasks.score does: predict sets the process up
    import torch
    from aim.data import CTRData, FieldSpec
    from aim.models import build_model
    from aim.train import predict
    fields = (FieldSpec("a", 5), FieldSpec("b", 7))
    data = CTRData(fields, torch.zeros(16, 2, dtype=torch.int32), (), torch.zeros(16))
    assert predict(build_model("fm", fields, embedding_dim=4), data).shape == (16,)
before = libc.mallinfo2()
block = libc.malloc(8 << 20)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(during.hblkhd - before.hblkhd, during.uordblks - before.uordblks, after.arena - during.arena, after.fordblks)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc's malloc")
def test_keeping_freed_memory_serves_an_8_mb_block_from_the_heap_and_keeps_it_after_free() -> None:
    """glibc's own accounting (mallinfo2), in fresh processes: where an 8 MB block comes from, and where it goes.

    The page faults this saves per training step are measured by ``bench.page_faults``: a count that varies
    too much between runs and machines to assert on (CI once counted 797 against 960).
    """
    def malloc_of_8_mb(setting: str) -> list[int]:
        run = subprocess.run([sys.executable, "-c", MALLOC_OF_8_MB, setting], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parent.parent)
        return [int(v) for v in run.stdout.split()[-4:]]

    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc before 2.33 has no mallinfo2")
    mapped, _, _, _ = malloc_of_8_mb("default")
    if mapped < 8 << 20:
        pytest.skip("malloc here is not glibc's with its defaults (an 8 MB block was not mmapped)")
    for setting in ("keep", "predict"):  # predict keeps freed memory as a Trainer does (a retrain scored 1.9x slower)
        mapped, heap_in_use, heap_change_on_free, free_in_heap = malloc_of_8_mb(setting)
        assert mapped == 0  # not a fresh mapping, whose pages would fault anew at each step...
        assert heap_in_use >= 8 << 20  # ...but heap memory,
        assert heap_change_on_free == 0 and free_in_heap >= 8 << 20  # which stays in the process, for the next step


def test_bf16_autocast_trains(planted) -> None:
    fields, data = planted
    torch.manual_seed(0)
    model = build_model("deepfm", fields, embedding_dim=8, hidden_units=[32])
    result = fit(model, data["train"].slice(0, 8000), data["valid"],
                 TrainConfig(epochs=2, batch_size=512, lr=3e-3, precision="bf16"))
    assert result.best_valid_auc > 0.6


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def test_bf16_is_native_follows_the_cpus_instructions() -> None:
    """oneDNN runs bf16 on AVX-512 (BW, VL, DQ) or AVX2-VNNI-2; on an AVX2-only CPU torch emulates it (57x slower
    than fp32 for one product on a Zen 3)."""
    flags = cpu_flags()
    if not flags or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs an x86-64 Linux /proc/cpuinfo to know what the CPU has")
    has_avx512 = {"avx512bw", "avx512vl", "avx512dq"} <= flags
    has_avx2_vnni_2 = "avx_ne_convert" in flags
    if has_avx512:
        assert bf16_is_native(torch.device("cpu"))
    elif not has_avx2_vnni_2:
        assert not bf16_is_native(torch.device("cpu"))


@pytest.mark.parametrize("native", [False, True])
def test_bf16_without_native_instructions_warns(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aim.train, "bf16_is_native", lambda device: native)
    model = torch.nn.Linear(2, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(model, TrainConfig(precision="bf16", device="cpu"))
        Trainer(model, TrainConfig(precision="fp32", device="cpu"))
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if native:
        assert not messages
    else:
        assert len(messages) == 1 and "no native bf16" in messages[0] and "train.precision" in messages[0]


@needs_shared
def test_fm_on_a_frappe_subsample_passes_an_auc_floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fields, data = encoded_in(project_params("frappe"))
    torch.manual_seed(0)
    model = build_model("fm", fields, embedding_dim=10)
    generator = torch.Generator().manual_seed(0)
    sample = data["train"].take(torch.randperm(len(data["train"]), generator=generator)[:100_000])
    fit(model, sample, data["valid"], TrainConfig(epochs=8, batch_size=4096, lr=0.01))
    auc = evaluate(model, data["test"])["auc"]
    print(f"FM on 100k Frappe rows, 8 epochs: test AUC {auc:.4f}")
    assert auc > 0.93  # BARS reports 0.9671 for FM on the full Frappe_x1 train split

"""generate: the embedded default data set, a synthetic click log in Criteo's raw TSV format.

Columns: label, I1..I13 (heavy-tailed integers, some missing), C1..C26 (8-hex-digit hashed categories
with Zipf-like frequencies and vocabularies from a handful to tens of thousands), M1 (a '|'-separated
multi-valued column). Labels come from a logistic model

    logit = bias + main effects + sum_planted strength * <u_a, u_b>  (pairs)
                                + sum_planted strength * sum(u_a * u_b * u_c)  (triples) + noise

where u_f is a latent vector per value of field f, i.e. exactly the kind of interaction a
factorization model can represent, so the search stage has a ground truth to recover. The truth file
names the planted interactions and the number of lines deliberately corrupted (so that the ingest
quarantine is exercised by the default run, and tests can check its counts).

Writes <out_dir>/clicks.tsv and <out_dir>/truth.json. Deterministic by seed: same params, same bytes.
Only when the chosen dataset reads them: on another dataset (`dvc exp run -S dataset=frappe`, your own log) the
stage writes a one-line note there instead of a 200,000-row log that nothing reads. Switching back regenerates
the same bytes, or DVC restores them from its run cache.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tasks.common import stage_main, write_json
from tasks.config import GenerateConfig, Params

LATENT_DIM = 4
MULTI_VOCAB = 40
# Corrupt lines planted per 10,000 rows, by the reason ingest should give them.
CORRUPTIONS = {"wrong_column_count": 3, "non_numeric": 2, "bad_label": 2}


def _vocab_sizes(n_fields: int, rng: np.random.Generator) -> np.ndarray:
    """Log-uniform vocabulary sizes from 4 to 50,000, like Criteo's mix of tiny and huge fields."""
    return np.exp(rng.uniform(np.log(4), np.log(50_000), size=n_fields)).astype(np.int64)


def _zipf_sample(vocab: int, n: int, rng: np.random.Generator) -> np.ndarray:
    exponent = rng.uniform(1.05, 1.4)
    p = 1.0 / np.arange(1, vocab + 1) ** exponent
    return rng.choice(vocab, size=n, p=p / p.sum())


def _pick_planted(cfg: GenerateConfig, vocab: np.ndarray, rng: np.random.Generator) -> tuple[list, list]:
    """Planted interactions live among fields with learnable vocabularies (8..2,000 values)."""
    eligible = [f for f in range(len(vocab)) if 8 <= vocab[f] <= 2_000]
    if len(eligible) < 4:
        eligible = list(np.argsort(vocab)[: max(4, len(vocab) // 2)])
    all_pairs = list(itertools.combinations(sorted(eligible), 2))
    pairs = [all_pairs[i] for i in rng.choice(len(all_pairs), size=min(cfg.planted_pairs, len(all_pairs)),
                                              replace=False)]
    triples: list[tuple[int, ...]] = []
    all_triples = list(itertools.combinations(sorted(eligible), 3))
    order = rng.permutation(len(all_triples))
    for i in order:  # triples that do not contain a planted pair, so order-3 truth is not order-2 truth
        t = all_triples[i]
        if not any(set(p) <= set(t) for p in pairs):
            triples.append(t)
        if len(triples) == cfg.planted_triples:
            break
    return pairs, triples


def _criteo_integers(n: int, n_fields: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-tailed non-negative counts (a few -1 as in Criteo's I2), 0-40 % missing per column."""
    values = np.floor(rng.lognormal(mean=rng.uniform(0, 4, n_fields), sigma=rng.uniform(1, 2.5, n_fields),
                                    size=(n, n_fields))).astype(np.int64)
    values[rng.random((n, n_fields)) < 0.01] = -1
    missing = rng.random((n, n_fields)) < rng.uniform(0.0, 0.4, n_fields)
    return values, missing


def simulate(cfg: GenerateConfig) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The clean synthetic table (label, I*, C*, M1) and its truth record."""
    rng = np.random.default_rng(cfg.seed)
    n, n_num, n_cat = cfg.rows, cfg.numeric_fields, cfg.categorical_fields

    vocab = _vocab_sizes(n_cat, rng)
    codes = np.stack([_zipf_sample(int(v), n, rng) for v in vocab], axis=1)  # (n, n_cat) value indices
    ints, int_missing = _criteo_integers(n, n_num, rng)
    multi_len = rng.integers(0, 6, size=n)  # 0..5 tokens; an empty list is legal
    multi_tokens = rng.integers(0, MULTI_VOCAB, size=(n, 5))

    # Main effects: small per-value weights for every categorical field, a log effect for numerics.
    logit = np.zeros(n)
    for f in range(n_cat):
        logit += rng.normal(0, 0.15, size=vocab[f])[codes[:, f]]
    num_w = rng.normal(0, 0.1, size=n_num)
    logit += (np.log1p(np.clip(ints, 0, None)) * ~int_missing) @ num_w
    token_w = rng.normal(0, 0.3, size=MULTI_VOCAB)
    mask = np.arange(5)[None, :] < multi_len[:, None]
    logit += (token_w[multi_tokens] * mask).sum(1) / np.maximum(multi_len, 1)

    # Planted interactions through per-value latent vectors (unit scale per coordinate).
    pairs, triples = _pick_planted(cfg, vocab, rng)
    latent = {f: rng.normal(0, 1, size=(int(vocab[f]), LATENT_DIM)) for f in {x for t in pairs + triples for x in t}}
    for a, b in pairs:
        logit += cfg.interaction_strength * (latent[a][codes[:, a]] * latent[b][codes[:, b]]).sum(1) / 2
    for a, b, c in triples:
        prod = latent[a][codes[:, a]] * latent[b][codes[:, b]] * latent[c][codes[:, c]]
        logit += cfg.interaction_strength * prod.sum(1) / 2
    logit += rng.normal(0, cfg.noise, size=n)

    # Shift the bias so the click rate lands at base_rate (bisection on the mean probability).
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 / (1 + np.exp(-(logit + mid)))).mean() < cfg.base_rate else (lo, mid)
    prob = 1 / (1 + np.exp(-(logit + lo)))
    label = (rng.random(n) < prob).astype(np.int8)

    # Raw strings: each value index becomes a stable 8-hex-digit hash, as in Criteo.
    columns: dict[str, Any] = {"label": label}
    for i in range(n_num):
        columns[f"I{i + 1}"] = pl.Series(ints[:, i]).set(pl.Series(int_missing[:, i]), None)  # type: ignore[arg-type]
    for f in range(n_cat):
        ids = rng.choice(2**32, size=int(vocab[f]), replace=False)
        hexes = np.char.mod("%08x", ids)
        columns[f"C{f + 1}"] = hexes[codes[:, f]]
    tok_names = np.char.mod("t%02d", np.arange(MULTI_VOCAB))
    multi = pl.DataFrame({"toks": tok_names[multi_tokens].tolist(), "len": multi_len})
    columns["M1"] = multi.select(pl.col("toks").list.head(pl.col("len")).list.join("|")).to_series()
    table = pl.DataFrame(columns)
    truth = {
        "rows": n,
        "seed": cfg.seed,
        "positive_ratio": float(label.mean()),
        "vocab_sizes": {f"C{f + 1}": int(vocab[f]) for f in range(n_cat)},
        "planted_pairs": [[f"C{a + 1}", f"C{b + 1}"] for a, b in pairs],
        "planted_triples": [[f"C{a + 1}", f"C{b + 1}", f"C{c + 1}"] for a, b, c in triples],
    }
    return table, truth


def corrupt(lines: list[str], rng: np.random.Generator) -> dict[str, int]:
    """Damage a few lines in place, the ways real logs break; returns how many of each."""
    n = len(lines)
    counts = {reason: per_10k * n // 10_000 for reason, per_10k in CORRUPTIONS.items()}
    victims = rng.choice(n, size=sum(counts.values()), replace=False)
    start = 0
    for reason, k in counts.items():
        for i in victims[start : start + k]:
            fields = lines[i].split("\t")
            if reason == "wrong_column_count":
                fields = fields[:-3]  # a truncated line
            elif reason == "non_numeric":
                fields[3] = "n/a"  # I3
            else:
                fields[0] = "2"  # a label outside {0, 1}
            lines[i] = "\t".join(fields)
        start += k
    return counts


def reads_generated_log(params: Params) -> bool:
    """Whether one of the chosen dataset's ``paths`` lies in ``generate.out_dir``."""
    out = Path(params.generate.out_dir).resolve()
    return any(Path(path).resolve().is_relative_to(out) for path in params.spec.paths)


def run(params: Params) -> dict[str, Any]:
    cfg = params.generate
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not reads_generated_log(params):
        for stale in ("clicks.tsv", "truth.json"):  # DVC removes its outputs first; a plain python -m does not
            (out / stale).unlink(missing_ok=True)
        note = (f"Not generated: dataset {params.dataset!r} does not read {out}/. Set dataset: synthetic "
                f"(or a dataset whose paths are here) and rerun the generate stage to write the synthetic log.\n")
        (out / "NOT_GENERATED.txt").write_text(note)
        print(f"generate: skipped, dataset {params.dataset} does not read {out}/ (a note is left there)")
        return {"generated": False, "dataset": params.dataset}
    (out / "NOT_GENERATED.txt").unlink(missing_ok=True)
    table, truth = simulate(cfg)
    lines = table.write_csv(separator="\t", include_header=False, quote_style="never").splitlines()
    truth["corrupted_lines"] = corrupt(lines, np.random.default_rng(cfg.seed + 1))
    (out / "clicks.tsv").write_text("\n".join(lines) + "\n")
    write_json(out / "truth.json", truth)
    print(f"generate: {len(lines):,} rows -> {out / 'clicks.tsv'} (click rate {truth['positive_ratio']:.3f}, "
          f"planted {len(truth['planted_pairs'])} pairs + {len(truth['planted_triples'])} triples, "
          f"{sum(truth['corrupted_lines'].values())} corrupt lines)")
    return truth


if __name__ == "__main__":
    stage_main(run)

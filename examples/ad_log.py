"""A small ad-click log of the kind a user brings, for the walkthrough in docs/own_log.md.

    python examples/ad_log.py                      # -> data/logs/ads.csv (60,000 impressions + 2 broken lines)
    python examples/ad_log.py --rows 5000 --out /tmp/ads.csv

One CSV with a header: a unix timestamp, the label as "yes"/"no", the site and the ad shown, the device (sometimes
empty), the bid price (sometimes empty), the user's age and a "|"-separated list of interest tags. The click
probability has main effects (device, age) and one interaction: a click is much likelier when the site's category
(site number mod 5) matches the ad's (ad number mod 5), which no single field shows. The spec that reads it is
examples/ads.yaml. The script prints the AUC of the true click probability, the ceiling for any model, and that of
the main effects alone, what a model gets that misses the interaction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def make_log(rows: int, seed: int = 0) -> tuple[list[str], float, float]:
    """The log's lines (header first, two broken lines last), the AUC of the true click probability and that of
    its main effects alone."""
    rng = np.random.default_rng(seed)
    site, ad = rng.integers(0, 50, rows), rng.integers(0, 200, rows)
    device = rng.choice(["ios", "android", "web", ""], rows, p=[0.3, 0.4, 0.25, 0.05])
    price, age = rng.lognormal(1.0, 1.0, rows), rng.integers(18, 70, rows)
    ts = 1_700_000_000 + rng.integers(0, 14 * 86_400, rows)
    tags = ["|".join(rng.choice(list("abcdefgh"), rng.integers(0, 4), replace=False)) for _ in range(rows)]
    main_effects = 0.5 * (device == "ios") + 0.02 * (age - 40)
    logit = -1.5 + 1.5 * (site % 5 == ad % 5) + main_effects
    clicked = rng.random(rows) < 1 / (1 + np.exp(-logit))
    lines = ["ts,clicked,site,ad,device,price,age,tags"]
    for i in range(rows):
        bid = "" if i % 97 == 0 else f"{price[i]:.2f}"
        lines.append(f"{ts[i]},{'yes' if clicked[i] else 'no'},s{site[i]},ad{ad[i]},{device[i]},{bid},{age[i]},"
                     f"{tags[i]}")
    lines += ["garbage line", "1700000000,maybe,s1,ad1,ios,1.0,30,a"]  # a short line and an unknown label
    return lines, float(roc_auc_score(clicked, logit)), float(roc_auc_score(clicked, main_effects))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("data/logs/ads.csv"))
    args = parser.parse_args()
    lines, ceiling, main_effects = make_log(args.rows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{args.out}: {args.rows:,} impressions + 2 broken lines; AUC of the true click probability {ceiling:.4f}, "
          f"of its main effects alone {main_effects:.4f}")


if __name__ == "__main__":
    main()

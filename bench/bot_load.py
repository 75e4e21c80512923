"""The bot under load: acknowledgement latency of 300 interactions from 50 members and the bot's
event-loop lag, while its worker trains three members on the same machine (tiny model, CPU).
The same scenario as tests/test_bot_soak.py, with the figures printed.

    python bench/bot_load.py [--interactions 300] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))

from engine.random_models import make_tiny_model  # noqa: E402
from tests.bot_harness import SOAK_SETTINGS, percentile, running_bot, soak  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = make_tiny_model(root / "tiny-sd")
        with running_bot(root / "run", {**SOAK_SETTINGS, "BASE_MODEL": model}, more_members=47) as d:
            soak(d, interactions=args.interactions)
            acks = [i.ack_seconds * 1000 for i in d.fake.interactions.values()]
            unfinished = "select count(*) from jobs where state in ('queued', 'running') or delivered_at is null"
            d.fake.wait_for(lambda: d.rows(unfinished) == [(0,)], 900, "every job to finish")
            d.bot.stop(signal.SIGTERM)
            lag = [json.loads(line) for line in d.bot.log().splitlines() if '"event loop lag"' in line][-1]
    figures = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}",
        "interactions": len(acks), "members": 50, "training_while_measured": 3,
        "ack_p50_ms": round(percentile(acks, 0.5), 1), "ack_p99_ms": round(percentile(acks, 0.99), 1),
        "ack_max_ms": round(max(acks), 1), "loop_lag_p50_ms": lag["lag_p50_ms"],
        "loop_lag_p99_ms": lag["lag_p99_ms"], "loop_lag_max_ms": lag["lag_max_ms"],
    }
    print(json.dumps(figures, indent=2))
    print(f"targets: ack p99 < 100 ms ({'met' if figures['ack_p99_ms'] < 100 else 'MISSED'}), "
          f"event-loop lag p99 < 50 ms ({'met' if figures['loop_lag_p99_ms'] < 50 else 'MISSED'})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

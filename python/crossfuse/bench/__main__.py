"""python -m crossfuse.bench [--quick] [--op NAME] [--device cpu|cuda] [--out DIR] [--suffix TEXT]"""
import argparse
import importlib
import os

import torch

from crossfuse.bench.runner import device_name, markdown, run_cases, write_results

OPS = ("lstm_cell", "gru_cell", "rnn_cell", "cross_attention", "lstm", "gru", "rnn", "contrastive_loss", "fusions")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m crossfuse.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    p.add_argument("--op", action="append", choices=OPS, help="benchmark only this op (repeatable)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    p.add_argument("--suffix", default="", help="appended to the results' file names (a partial run beside a full one)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"crossfuse.bench on {device_name(device)}; torch threads {torch.get_num_threads()}")
    rows = []
    for op in args.op or OPS:
        mod = importlib.import_module(f"crossfuse.bench.{op}")
        rows += run_cases(mod.cases(device, args.quick), device, args.quick)
        paths = write_results(rows, device, args.out, args.quick, args.suffix)  # after each op: a time limit keeps what ran
    print()
    print(markdown(rows, device_name(device), {}))
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    main()

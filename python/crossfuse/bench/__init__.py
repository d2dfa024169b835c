"""The benchmark runner behind `python -m crossfuse.bench`. Each op registers its cases in
crossfuse/bench/<op>.py; the runner times them, computes ratios in the same run and writes results."""

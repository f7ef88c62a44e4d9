"""Tensor and pipeline parallelism on 2 ranks of this machine against one process, and on paper for 7B/70B.

Method: `workbench.parallel.bench.METHOD` (peers alternated round by round inside one 2-rank
launch, 1 thread per rank against 1 and 2 threads in one process; medians). Bytes per decode token:
counted at run time by `Comm` and by formula (`workbench.parallel.cost`); for the 7B and 70B configs
by formula only, bfloat16 activations. The performance model's tensor-parallel prediction for this
machine uses the measured one-process time at 1 thread and the measured collective times.
Writes data/results/parallel.json and .csv atomically.

    .venv/bin/python benchmarks/parallel.py [--rounds 3] [--prompt-tokens 32] [--new-tokens 16]
    .venv/bin/python benchmarks/parallel.py --quick      # smoke run: writes parallel_quick.*
"""

from __future__ import annotations

import os
import statistics

import pandas as pd

from workbench.bench.flags import benchmark_parser, parse_benchmark_args
from workbench.bench.timing import run_info
from workbench.io import atomic_write_json, atomic_write_text
from workbench.parallel import launch
from workbench.parallel.bench import METHOD, rank_bench
from workbench.parallel.cost import (PAPER_CONFIGS, bytes_per_token_table, pipeline_bytes_per_token,
                                     tensor_parallel_payload, tensor_parallel_wire_bytes)


def main(argv=None):
    parser = benchmark_parser(__doc__, "parallel",
                              full={"rounds": 3, "prompt_tokens": 32, "new_tokens": 16, "kernels": "on"},
                              quick={"rounds": 1, "prompt_tokens": 16, "new_tokens": 8})
    args = parse_benchmark_args(parser, argv)  # --threads: this process's; each rank runs 1 thread
    info = run_info(bandwidth=args.bandwidth)
    info["threads"] = "1 per rank; the one-process peers 1 and 2"
    ranks = launch(rank_bench, 2, (args.model, args.rounds, args.prompt_tokens, args.new_tokens, 1,
                                   args.kernels == "on"), threads=1, timeout_s=3600,
                   comm_timeout_s=3600)  # a rank waits at a barrier while rank 0 runs the one-process peers
    r0 = ranks[0]
    rows = []
    for name in r0["peers"]:
        runs = r0["times"][name]
        sequences = r0["pp_sequences"] if "batch" in name else r0["single_sequences"]
        decode = [sequences * (args.new_tokens - 1) / d for _, d in runs]
        rows.append({"peer": name, "sequences": sequences, "decode_tok_s": statistics.median(decode),
                     "decode_tok_s_rounds": [round(x, 2) for x in decode]})
    table = pd.DataFrame(rows).set_index("peer")
    base1, base2 = table.loc["single_2_threads", "decode_tok_s"], table.loc["single_2_threads_batch2", "decode_tok_s"]
    table["ratio_to_one_process_2_threads"] = [v / (base2 if "batch" in n else base1)
                                               for n, v in table["decode_tok_s"].items()]
    # Performance model here: compute splits perfectly over the ranks, plus 2L+1 all-reduces and a gather.
    from workbench import load_model

    config = load_model(args.model)[0].config
    t1 = 1 / table.loc["single_1_thread", "decode_tok_s"]
    c = r0["collectives"]
    predicted_tp = 1 / (t1 / 2 + (2 * config.num_hidden_layers + 1) * c["all_reduce_s"] + c["all_gather_s"])
    counted = r0["tp_traffic_prefill_and_one_step"]
    formula = {k: tensor_parallel_payload(config, 2, tokens=args.prompt_tokens, logit_rows=1)[k]
               + tensor_parallel_payload(config, 2)[k] for k in counted}  # the prompt's prefill + one decode step
    result = {
        "method": METHOD, "run": info, "model": args.model, "kernels": args.kernels, "rounds": args.rounds,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "cores": os.cpu_count(),
        "peers": table.reset_index().to_dict(orient="records"),
        "collectives_s": c,
        "performance_model": {"one_process_1_thread_s_per_token": t1, "predicted_tp2_tok_s": predicted_tp,
                              "measured_tp2_tok_s": table.loc["tp2", "decode_tok_s"],
                              "formula": "1 / (t_1thread / 2 + (2L+1) x all_reduce_s + all_gather_s)"},
        "bytes_per_decode_token": {
            "bundled_float32_tp2": {**tensor_parallel_payload(config, 2), "wire_per_rank":
                                    tensor_parallel_wire_bytes(config, 2)},
            "bundled_float32_pp2_all_ranks": pipeline_bytes_per_token(config, 2),
            "counted_tp2_prefill_plus_one_step": counted, "formula_tp2_prefill_plus_one_step": formula,
            "counted_equals_formula": counted == formula,
            "paper_bfloat16": bytes_per_token_table(PAPER_CONFIGS)},
        "weight_bytes_per_rank": {"whole": r0["whole_weight_bytes"], **{f"rank{r['rank']}": r["weight_bytes"]
                                                                         for r in ranks}},
        "loadavg_end": list(os.getloadavg()),
    }
    atomic_write_json(args.out + ".json", result)
    atomic_write_text(args.out + ".csv", table.reset_index().drop(columns="decode_tok_s_rounds").to_csv(index=False))
    print(table.drop(columns="decode_tok_s_rounds").to_markdown(floatfmt=".2f"))
    print(f"performance model, tp2 here: predicted {predicted_tp:.1f} tok/s, measured "
          f"{table.loc['tp2', 'decode_tok_s']:.1f}; all-reduce {c['all_reduce_s'] * 1e6:.0f} us, "
          f"all-gather {c['all_gather_s'] * 1e6:.0f} us; counted == formula: {counted == formula}; "
          f"load {info['loadavg_start']} -> {result['loadavg_end']}")


if __name__ == "__main__":
    main()

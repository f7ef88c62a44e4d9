"""`evalscope eval` (eval_type openai_api) on the project's own sets in `data/eval/`, scored per
question from evalscope's review files, with a 95% confidence interval per score.

- fidelity: prompts whose references are the float32 model's own greedy answers
  (`write_references`); a variant scores how closely it reproduces them (ROUGE-L F1, and exact match).
- mcq: general_mcq, four choices, English prompt; accuracy (chance: 25%).
- qa: general_qa, questions with short reference answers; ROUGE-L recall (evalscope's main score).
"""

from __future__ import annotations

import csv
import glob
import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidParameterError
from ..io import atomic_write_json, atomic_write_text
from .keys import REVIEW_PREDICTION, REVIEW_SCORE, REVIEW_TARGET, SCORE_KEYS, EvalscopeOutputError, read_key
from .offline import offline, quiet, run_isolated
from .server import Server

DATA = Path(__file__).resolve().parents[2] / "data" / "eval"
MCQ_TEMPLATE = ("Answer the following multiple choice question. The entire content of your response should be of "
                "the following format: 'ANSWER: [LETTER]' (without quotes) where [LETTER] is one of {letters}.\n\n"
                "{question}\n\n{choices}")


class DatasetFormatError(InvalidParameterError):
    """An evaluation file that is missing, empty, or lacks a column evalscope needs."""


@dataclass(frozen=True)
class TaskSet:
    name: str
    benchmark: str      # evalscope's dataset name
    directory: Path
    subset: str         # the file evalscope reads: <subset>.jsonl or <subset>_val.csv
    score: str          # our column in SCORE_KEYS
    chance: float | None = None

    @property
    def file(self) -> Path:
        return self.directory / (f"{self.subset}_val.csv" if self.benchmark == "general_mcq" else f"{self.subset}.jsonl")


TASK_SETS = ("fidelity", "mcq", "qa")


def task_sets(fidelity_refs: str = "smollm2-135m") -> dict[str, TaskSet]:
    return {"fidelity": TaskSet("fidelity", "general_qa", DATA / "fidelity", fidelity_refs, "rouge_l_f"),
            "mcq": TaskSet("mcq", "general_mcq", DATA / "mcq", "general", "acc", chance=0.25),
            "qa": TaskSet("qa", "general_qa", DATA / "qa", "general", "rouge_l_r")}


def read_rows(path: Path, required: tuple[str, ...]) -> list[dict]:
    """The rows of a .jsonl or .csv file, each checked for the `required` columns (one-line errors)."""
    if not path.is_file():
        raise DatasetFormatError(f"{path}: no such file")
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetFormatError(f"{path}:{i}: not JSON ({e.msg})") from None
    if not rows:
        raise DatasetFormatError(f"{path}: no rows")
    for i, row in enumerate(rows, 1):
        missing = [c for c in required if not str(row.get(c) or "").strip()]
        if missing:
            raise DatasetFormatError(f"{path}: row {i} has no {', '.join(missing)} (needs: {', '.join(required)})")
    return rows


def check_set(task: TaskSet) -> int:
    """Validate the file before evalscope reads it; the number of questions."""
    if task.benchmark == "general_mcq":
        rows = read_rows(task.file, ("question", "A", "B", "answer"))
        for i, r in enumerate(rows, 1):
            if r["answer"] not in r or not str(r[r["answer"]]).strip():
                raise DatasetFormatError(f"{task.file}: row {i} answers {r['answer']!r}, which is not one of its choices")
        return len(rows)
    if task.name == "fidelity" and not task.file.is_file():
        raise DatasetFormatError(f"{task.file}: no fidelity references for {task.subset!r}; write them with "
                                 f"`workbench eval references --model {task.subset}`")
    return len(read_rows(task.file, ("question", "answer")))


def bleu_unavailable() -> str | None:
    """Why evalscope's BLEU cannot run here (it tokenizes with NLTK's punkt data), or None."""
    try:
        import nltk

        nltk.data.find("tokenizers/punkt_tab")
        return None
    except (ImportError, LookupError):
        return "BLEU left out: NLTK's punkt tokenizer data is not installed and is never downloaded here"


def references_meta(task: TaskSet) -> dict:
    meta = task.directory / f"{task.subset}.meta.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def write_references(server: Server, prompts=DATA / "fidelity" / "prompts.jsonl", out_dir=DATA / "fidelity",
                     name: str | None = None, max_tokens: int = 32) -> Path:
    """The server's greedy answers to every prompt, as a general_qa file (`question`, `answer`): the
    fidelity references. Sent exactly as evalscope sends a general_qa question (one user message)."""
    rows = read_rows(Path(prompts), ("question",))
    answers = []
    for r in rows:
        body = {"model": server.model, "messages": [{"role": "user", "content": r["question"]}],
                "max_tokens": max_tokens, "temperature": 0.0}
        req = urllib.request.Request(server.url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json",
                                      **({"Authorization": f"Bearer {server.api_key}"} if server.api_key else {})})
        with urllib.request.urlopen(req, timeout=600) as resp:
            answers.append({"question": r["question"], "answer": json.load(resp)["choices"][0]["message"]["content"]})
    name = name or server.model
    out = Path(out_dir) / f"{name}.jsonl"
    atomic_write_text(out, "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))
    atomic_write_json(Path(out_dir) / f"{name}.meta.json",
                      {"model": server.model, "max_tokens": max_tokens, "temperature": 0.0, "prompts": len(rows),
                       "command": f"workbench eval references {' '.join(server.variant.flags()) if server.variant else '--url URL'} "
                                  f"--max-tokens {max_tokens}"})
    return out


def mean_ci(values, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and a percentile-bootstrap interval (seeded: the same scores give the same interval)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(x, size=(resamples, len(x))).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)


def read_reviews(work_dir: Path, task: TaskSet) -> list[dict]:
    """Per question: evalscope's scores (by SCORE_KEYS), prediction and target."""
    files = glob.glob(str(work_dir / "reviews" / "*" / f"{task.benchmark}_{task.subset}.jsonl"))
    if len(files) != 1:
        raise EvalscopeOutputError(f"{work_dir}/reviews: expected one {task.benchmark}_{task.subset}.jsonl, "
                                   f"found {len(files)} (see {work_dir}/console.log)")
    out = []
    for i, line in enumerate(Path(files[0]).read_text(encoding="utf-8").splitlines(), 1):
        review, where = json.loads(line), f"{files[0]}:{i}"
        target = read_key(review, REVIEW_TARGET, where)
        out.append({"score": float(read_key(read_key(review, REVIEW_SCORE, where), SCORE_KEYS[task.score], where)),
                    "prediction": read_key(review, REVIEW_PREDICTION, where),
                    "target": target[0] if isinstance(target, list) else target})
    return out


def run_task(server: Server, task: TaskSet, work_dir, *, limit: int | None = None, max_tokens: int = 32,
             batch_size: int = 4, resume: bool = False) -> dict:
    """One set on one server: a row with the score, its interval and the number of questions."""
    from evalscope import TaskConfig, run_task as evalscope_run

    work_dir = Path(work_dir)
    done = work_dir / "row.json"
    if resume and done.is_file():
        return json.loads(done.read_text())
    questions = check_set(task)
    if task.name == "fidelity":  # the references' own length: a longer answer would not be a copy
        max_tokens = references_meta(task).get("max_tokens", max_tokens)
    dataset_args = {"local_path": str(task.directory), "subset_list": [task.subset]}
    if task.benchmark == "general_qa":
        dataset_args["metric_list"] = ["Rouge"]  # BLEU: see bleu_unavailable
    else:
        dataset_args["prompt_template"] = MCQ_TEMPLATE
    work_dir.mkdir(parents=True, exist_ok=True)
    config = TaskConfig(model=server.model, api_url=server.url + "/v1", api_key=server.api_key or "none",
                        eval_type="openai_api", datasets=[task.benchmark], dataset_args={task.benchmark: dataset_args},
                        generation_config={"max_tokens": max_tokens, "temperature": 0.0}, eval_batch_size=batch_size,
                        limit=limit, work_dir=str(work_dir), no_timestamp=True)
    with offline(), quiet(work_dir / "console.log"):
        try:
            run_isolated(evalscope_run, config, log_path=work_dir / "console.log")
        except Exception as e:
            raise EvalscopeOutputError(f"evalscope eval failed on {task.name}: {type(e).__name__}: "
                                       f"{str(e).splitlines()[0] if str(e) else ''} (see {work_dir}/console.log)") from None
    reviews = read_reviews(work_dir, task)
    score, lo, hi = mean_ci([r["score"] for r in reviews])
    row = {"variant": server.label, "model": server.model, "set": task.name, "metric": task.score,
           "score": score, "ci_low": lo, "ci_high": hi, "questions": len(reviews), "questions_in_set": questions,
           "exact_match": sum(r["prediction"].strip() == str(r["target"]).strip() for r in reviews) / len(reviews),
           "chance": task.chance, "max_tokens": max_tokens}
    atomic_write_json(done, row)
    return row


def run_tasks(server: Server, sets=TASK_SETS, work_dir="evalscope_tasks", *, fidelity_refs=None,
              limit: int | None = None, max_tokens: int = 32, batch_size: int = 4, resume: bool = False):
    """`run_task` for each named set; a DataFrame, one row per set."""
    import pandas as pd

    known = task_sets(fidelity_refs or "smollm2-135m")
    unknown = [s for s in sets if s not in known]
    if unknown:
        raise InvalidParameterError(f"unknown task set {', '.join(unknown)} (known: {', '.join(known)})")
    if limit is not None and limit < 1:
        raise InvalidParameterError(f"--limit must be >= 1, got {limit}")
    reason = bleu_unavailable()
    if reason and any(known[s].benchmark == "general_qa" for s in sets):
        print(f"workbench eval: {reason}", file=sys.stderr)
    rows = [run_task(server, known[s], Path(work_dir) / s, limit=limit, max_tokens=max_tokens,
                     batch_size=batch_size, resume=resume) for s in sets]
    return pd.DataFrame(rows)

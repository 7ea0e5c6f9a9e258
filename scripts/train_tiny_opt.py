"""Train the tiny real OPT checkpoint of tests/data/opt_stdlib on text every machine has, and check that
calibrated pruning orders as published: ppl(dense) < ppl(sparsegpt) <= ppl(wanda) < ppl(magnitude).

Corpus: the docstrings of the Python standard library (modules, classes, functions), read with ``ast``
(nothing is imported) from the running interpreter's stdlib directory, files in sorted order; tests,
idle_test and site-packages are left out. Each file goes to one split by a hash of its relative path
(5 % test, 5 % calibration, 90 % train), so the splits never share a docstring. The Python version and the
corpus's SHA-256 are recorded in corpus.json: another Python version gives another corpus.

    python scripts/train_tiny_opt.py                        # train seeds 0 1 2, check, write tests/data
    python scripts/train_tiny_opt.py --steps 50 --seeds 0 --out /tmp/x   # a quick smoke run

Writes to --out: config.json + model.safetensors (HF names, float32, read by
jax_flashllm.models.load_pretrained), tokenizer.json (byte-level BPE, `tokenizers`), calib.txt and heldout.txt
(excerpts of the calibration and test splits, for the CLI tests), corpus.json (version, hash, settings and the
measured perplexities of every seed). Other seeds' checkpoints go to --work.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import sysconfig
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from jax_flashllm import prune
from jax_flashllm.eval import perplexity
from jax_flashllm.models import OPTConfig, OPTForCausalLM, load_pretrained

SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT's ids: <pad> 1, </s> 2 (bos and eos)
EOS = 2
SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_docstrings(root: str) -> list[tuple[str, str]]:
    """(relative file path, docstring) for every module/class/function docstring under ``root``, in file
    order then ``ast.walk`` order (both deterministic)."""
    out = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            try:
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # a few stdlib files are templates or deliberately invalid
            rel = os.path.relpath(path, root)
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and doc.strip():
                        out.append((rel, doc.strip()))
    out.sort(key=lambda item: item[0])  # os.walk visits a directory's files before its subdirectories
    return out


def split_of(rel: str) -> str:
    bucket = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % 20
    return "test" if bucket == 0 else "calib" if bucket == 1 else "train"


def train_tokenizer(docs: list[str], vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer)
    # As OPT's tokenizer: every text starts with </s>.
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B",
                                                       special_tokens=[("</s>", EOS)])
    return tok


def stream(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    """One token stream: each docstring preceded by </s>."""
    return np.concatenate([np.asarray(e.ids, np.int32) for e in tok.encode_batch(docs)])


def hf_tensors(model: OPTForCausalLM) -> dict[str, np.ndarray]:
    """The model's parameters under HuggingFace OPT names ((out, in) Linear weights)."""
    out = {}
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        *module, leaf = [str(p) for p in path]
        array = np.asarray(value.get_value(), np.float32)
        if leaf == "kernel":
            array = array.T
        name = {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(leaf, leaf)
        out[".".join(["model", "decoder", *module, name])] = np.ascontiguousarray(array)
    return out


def save_checkpoint(model: OPTForCausalLM, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    config = {**model.config.to_dict(), "architectures": ["OPTForCausalLM"], "torch_dtype": "float32",
              "dropout": 0.0, "attention_dropout": 0.0}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(hf_tensors(model), os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


def train(config: OPTConfig, data: np.ndarray, *, seed: int, steps: int, batch: int, lr: float) -> OPTForCausalLM:
    """AdamW on random windows of ``data`` (the train stream); everything fixed by ``seed``."""
    model = OPTForCausalLM(config, rngs=nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 5 + 1), steps, lr / 10)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    state = opt.init(params)
    window = config.max_position_embeddings

    @jax.jit
    def step(params, state, ids):
        def loss(p):
            logits = nnx.merge(graphdef, p, rest)(ids[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    rng = np.random.default_rng(seed)
    start = time.time()
    for i in range(steps):
        offsets = rng.integers(0, len(data) - window - 1, batch)
        ids = jnp.asarray(np.stack([data[o:o + window + 1] for o in offsets]))
        params, state, value = step(params, state, ids)
        if i % 100 == 0 or i == steps - 1:
            print(f"  seed {seed} step {i:5d} loss {float(value):.3f} ({time.time() - start:.0f} s)", flush=True)
    return nnx.merge(graphdef, params, rest)


def evaluate(directory: str, calib: np.ndarray, test: np.ndarray, settings: list[tuple[str, float | None, str | None]],
             *, blocksize: int) -> dict[str, float]:
    """Perplexity on the test stream of the dense checkpoint and of each (method, sparsity, nm) pruning."""
    results = {"dense": perplexity(load_pretrained(directory, jnp.float32), test)}
    for method, sparsity, nm in settings:
        model = load_pretrained(directory, jnp.float32)
        # Pruned weights stay float32 and dense here, so the numbers measure the methods, not bf16 rounding.
        prune.prune_model(model, calib, sparsity, method=method, nm=nm, encode=False, blocksize=blocksize)
        results[f"{method} {nm or f'{sparsity:.0%}'}"] = perplexity(model, test)
    return results


def check_order(results: dict[str, float], label: str, margin: float) -> list[str]:
    """The published ordering at one setting; wanda < magnitude by at least ``margin`` (relative)."""
    d, s, w, m = (results[k] for k in ("dense", f"sparsegpt {label}", f"wanda {label}", f"magnitude {label}"))
    failures = []
    # The margin separates methods; dense vs sparsegpt only has to be in order (a small gap is the goal).
    if not d < s:
        failures.append(f"dense {d:.2f} not below sparsegpt {s:.2f}")
    if not s <= w:
        failures.append(f"sparsegpt {s:.2f} above wanda {w:.2f}")
    if not w * (1 + margin) < m:
        failures.append(f"wanda {w:.2f} not below magnitude {m:.2f} by {margin:.0%}")
    return [f"{label}: {f}" for f in failures]


def calibration_windows(data: np.ndarray, count: int, window: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    offsets = rng.integers(0, len(data) - window, count)
    return np.stack([data[o:o + window] for o in offsets])


def markdown_table(per_seed: dict) -> str:
    """Perplexity per setting and seed, and the mean over seeds (a markdown table)."""
    seeds = list(per_seed)
    keys = list(per_seed[seeds[0]]["perplexity"])
    lines = ["| setting | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "| :--- |" + " ---: |" * (len(seeds) + 1)]
    for key in keys:
        values = [per_seed[s]["perplexity"][key] for s in seeds]
        lines.append(f"| {key} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {np.mean(values):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="tests/data/opt_stdlib", help="where seed 0's checkpoint goes")
    p.add_argument("--work", default="/tmp/opt_stdlib_seeds", help="where the other seeds' checkpoints go")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=5000,
                   help="AdamW steps of --batch x --window tokens (5000: ~19 passes over the train split; at 700 "
                        "the model was too undertrained for pruning to separate the methods)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--window", type=int, default=128, help="max_position_embeddings")
    p.add_argument("--calib", type=int, default=64, help="calibration windows of --window tokens")
    p.add_argument("--margin", type=float, default=0.02, help="relative margin of wanda < magnitude")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    p.add_argument("--skip-train", action="store_true", help="reuse the checkpoints already written")
    p.add_argument("--table", action="store_true",
                   help="only print the table of OUT/corpus.json and re-check its ordering (rewriting the record)")
    args = p.parse_args(argv)
    if args.table:
        path = os.path.join(args.out, "corpus.json")
        with open(path) as f:
            record = json.load(f)
        print(markdown_table(record["seeds"]))
        record["ordering_failures"] = [f"seed {seed} {f}" for seed, r in record["seeds"].items()
                                       for label in ("50%", "2:4")
                                       for f in check_order(r["perplexity"], label, args.margin)]
        with open(path, "w") as f:
            json.dump(record, f, indent=2)
        return report(record["ordering_failures"])

    root = sysconfig.get_paths()["stdlib"]
    entries = stdlib_docstrings(root)
    corpus = "\n\n".join(doc for _, doc in entries)
    digest = hashlib.sha256(corpus.encode()).hexdigest()
    splits = {name: [doc for rel, doc in entries if split_of(rel) == name] for name in ("train", "calib", "test")}
    print(f"Python {sys.version.split()[0]}: {len(entries)} docstrings, {len(corpus):,} chars, sha256 {digest[:16]}")

    tok = train_tokenizer(splits["train"], args.vocab)
    data = {name: stream(tok, docs) for name, docs in splits.items()}
    print("tokens: " + ", ".join(f"{name} {len(d):,}" for name, d in data.items()))
    config = OPTConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                       num_attention_heads=args.hidden // 32, ffn_dim=4 * args.hidden,
                       max_position_embeddings=args.window, word_embed_proj_dim=args.hidden,
                       sampling_vocab_size=tok.get_vocab_size())
    calib = calibration_windows(data["calib"], args.calib, args.window)
    settings = [(m, s, None) for s in args.sparsities for m in ("sparsegpt", "wanda", "magnitude")]
    settings += [(m, None, "2:4") for m in ("sparsegpt", "wanda", "magnitude")]

    per_seed, failures = {}, []
    previous = {}
    if args.skip_train and os.path.isfile(os.path.join(args.out, "corpus.json")):
        with open(os.path.join(args.out, "corpus.json")) as f:
            previous = json.load(f)["seeds"]
    for seed in args.seeds:
        directory = args.out if seed == args.seeds[0] else os.path.join(args.work, f"seed{seed}")
        start = time.time()
        if not args.skip_train:
            model = train(config, data["train"], seed=seed, steps=args.steps, batch=args.batch, lr=args.lr)
            save_checkpoint(model, directory)
        trained = time.time() - start
        if args.skip_train:  # keep the recorded training time of the checkpoint being re-evaluated
            trained = previous.get(str(seed), {}).get("train_seconds", 0.0)
        results = evaluate(directory, calib, data["test"], settings, blocksize=args.hidden)
        per_seed[seed] = {"train_seconds": round(trained, 1), "perplexity": results}
        print(f"seed {seed} (trained in {trained:.0f} s): " + ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
        for label in ("50%", "2:4"):
            failures += [f"seed {seed} {f}" for f in check_order(results, label, args.margin)]

    tok.save(os.path.join(args.out, "tokenizer.json"))
    for name, file in (("calib", "calib.txt"), ("test", "heldout.txt")):
        with open(os.path.join(args.out, file), "w") as f:
            f.write("\n\n".join(splits[name])[:20000])
    record = {"python": sys.version.split()[0], "corpus_sha256": digest, "docstrings": len(entries),
              "chars": len(corpus), "tokens": {k: int(len(v)) for k, v in data.items()},
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work", "skip_train", "table")},
              "seeds": per_seed, "ordering_failures": failures}
    with open(os.path.join(args.out, "corpus.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(markdown_table({str(k): v for k, v in per_seed.items()}))
    return report(failures)


def report(failures: list[str]) -> int:
    for failure in failures:
        print("ORDER FAILED:", failure)
    print("ordering dense < sparsegpt <= wanda < magnitude at 50% and 2:4: "
          + ("holds for every seed" if not failures else f"{len(failures)} failure(s)"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

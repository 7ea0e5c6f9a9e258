"""The command line: ``python -m jax_flashllm prune|eval|generate`` (each with --help and examples).

A model directory is either a HuggingFace OPT checkpoint (config.json + model.safetensors, read with
``load_pretrained``) or one written by ``prune`` / ``save_model`` (read with ``load_model``); the file's own
metadata tells which. The tokenizer defaults to the model directory's tokenizer.json (``prune`` copies it
next to the pruned model).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

import numpy as np

__all__ = ["main", "build_parser"]

_PRUNE_EXAMPLES = """examples:
  python -m jax_flashllm prune --model tests/data/opt_stdlib --sparsity 0.5 --method sparsegpt \\
      --calib tests/data/opt_stdlib/calib.txt --out /tmp/opt_stdlib_sgpt50
  python -m jax_flashllm prune --model ~/opt-125m --method wanda --nm 2:4 --calib wiki.train.txt \\
      --tokenizer ~/opt-125m/tokenizer.json --calib-samples 128 --calib-tokens 2048 --out /tmp/opt125m_wanda24
"""
_EVAL_EXAMPLES = """examples:
  python -m jax_flashllm eval --model /tmp/opt_stdlib_sgpt50 --data tests/data/opt_stdlib/heldout.txt
  python -m jax_flashllm eval --model ~/opt-125m --data wiki.test.txt --window 2048 --stride 512
"""
_GENERATE_EXAMPLES = """examples:
  python -m jax_flashllm generate --model /tmp/opt_stdlib_sgpt50 --prompt "Return the number of"
  python -m jax_flashllm generate --model ~/opt-125m --prompt "Hello" --prompt "The sky" \\
      --max-new-tokens 40 --temperature 0.8 --top-p 0.9 --seed 1
"""


def _model_dir(path: str) -> str:
    if not os.path.isdir(path):
        raise SystemExit(f"error: model directory not found: {path}")
    return path


def load_any(path: str, dtype: str = "float32"):
    """An OPTForCausalLM from a HF checkpoint directory (parameters in ``dtype``) or from a directory written
    by save_model (its own dtypes; sparse layers stay encoded)."""
    from safetensors import safe_open

    from jax_flashllm.models import load_model, load_pretrained
    from jax_flashllm.models.checkpoint import SAVED_FORMAT, SINGLE_FILE

    single = os.path.join(path, SINGLE_FILE)
    if os.path.isfile(single):
        with safe_open(single, framework="numpy") as handle:
            # Any jax_flashllm save (this version or another) goes to load_model, whose errors name the version.
            if (handle.metadata() or {}).get("format", "").startswith(SAVED_FORMAT.split("/")[0]):
                return load_model(path)
    return load_pretrained(path, dtype)


def _tokenizer(args):
    from tokenizers import Tokenizer

    path = args.tokenizer or os.path.join(args.model, "tokenizer.json")
    if not os.path.isfile(path):
        raise SystemExit(f"error: tokenizer not found: {path} (pass --tokenizer FILE.json)")
    return Tokenizer.from_file(path), path


def _read_ids(tokenizer, file: str) -> np.ndarray:
    """The whole text file as one token stream (with the tokenizer's own special tokens)."""
    if not os.path.isfile(file):
        raise SystemExit(f"error: text file not found: {file}")
    with open(file, encoding="utf-8") as f:
        text = f.read()
    return np.asarray(tokenizer.encode(text).ids, np.int32)


def calibration_windows(stream: np.ndarray, samples: int, tokens: int, seed: int) -> np.ndarray:
    """``samples`` random windows of ``tokens`` tokens from a token stream (S, T) int32, as SparseGPT draws
    its C4 segments; the whole stream once when it is shorter than a window."""
    if len(stream) <= tokens:
        return stream[None]
    starts = np.random.default_rng(seed).integers(0, len(stream) - tokens, samples)
    return np.stack([stream[s:s + tokens] for s in starts])


def _nm(text: str | None):
    if text is None:
        return None
    from jax_flashllm.prune import parse_nm

    try:
        return parse_nm(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_prune(args) -> int:
    from jax_flashllm.models import save_model
    from jax_flashllm.prune import prune_model
    from jax_flashllm.prune.owl import DEFAULT_OWL

    model = load_any(_model_dir(args.model), "float32")
    tokenizer, tokenizer_path = _tokenizer(args)
    max_tokens = model.config.max_position_embeddings
    tokens = min(args.calib_tokens or max_tokens, max_tokens)
    calib = calibration_windows(_read_ids(tokenizer, args.calib), args.calib_samples, tokens, args.seed)
    sparsity = args.sparsity if args.sparsity is not None else None if args.nm is not None else 0.5
    owl = False
    if args.owl or args.owl_m is not None or args.owl_lambda is not None:
        m, lam = DEFAULT_OWL
        owl = (m if args.owl_m is None else args.owl_m, lam if args.owl_lambda is None else args.owl_lambda)
    report = prune_model(model, calib, sparsity, method=args.method, nm=args.nm, blocksize=args.blocksize,
                         damp=args.damp, dtype=args.dtype, batch_size=args.batch_size,
                         owl=owl)
    print(report)
    save_model(model, args.out)
    shutil.copyfile(tokenizer_path, os.path.join(args.out, "tokenizer.json"))
    print(f"calibration: {calib.shape[0]} x {calib.shape[1]} tokens; wrote {args.out}")
    return 0


def cmd_eval(args) -> int:
    from jax_flashllm.eval import perplexity

    model = load_any(_model_dir(args.model), args.dtype)
    tokenizer, _ = _tokenizer(args)
    ids = _read_ids(tokenizer, args.data)
    ppl = perplexity(model, ids, window=args.window, stride=args.stride, batch_size=args.batch_size)
    print(f"perplexity {ppl:.3f} ({len(ids)} tokens, {os.path.basename(args.data)})")
    return 0


def cmd_generate(args) -> int:
    from jax_flashllm.text import generate_text

    model = load_any(_model_dir(args.model), args.dtype)
    tokenizer, _ = _tokenizer(args)
    texts = generate_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    for prompt, text in zip(args.prompt, texts):
        print(f"{prompt}{text}")
    return 0


def _model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --tokenizer and --dtype, as eval and generate take them."""
    p.add_argument("--model", required=True, help="model directory (HF checkpoint or written by prune)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: MODEL/tokenizer.json)")
    p.add_argument("--dtype", default="float32", help="parameter dtype of a HF checkpoint (default float32)")


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m jax_flashllm",
                                  description="Prune, evaluate and run sparse OPT models with jax_flashllm.")
    top.add_argument("-v", "--verbose", action="store_true", help="log every pruned layer (INFO)")
    sub = top.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("prune", help="prune a dense model on calibration text and save it sparse",
                       description="Prune the decoder Linear layers of an OPT model layer by layer on calibration "
                                   "text, encode them sparse and save a model that load_model reads.",
                       epilog=_PRUNE_EXAMPLES, formatter_class=fmt)
    p.add_argument("--model", required=True, help="dense model directory (HF OPT checkpoint)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--calib", required=True, help="calibration text file (UTF-8)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: MODEL/tokenizer.json)")
    p.add_argument("--method", choices=("sparsegpt", "wanda", "magnitude"), default="sparsegpt")
    p.add_argument("--sparsity", type=float, help="fraction of each layer's weights pruned (default 0.5)")
    p.add_argument("--nm", type=_nm, help="N:M pattern instead, e.g. 2:4 (keep 2 of every 4 inputs)")
    p.add_argument("--calib-samples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--calib-tokens", type=int, help="tokens per window (default: the model's max positions)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block (default 128)")
    p.add_argument("--damp", type=float, default=0.01, help="SparseGPT dampening, x mean(diag H)")
    p.add_argument("--dtype", choices=("bfloat16", "float16"), help="sparse weight storage (default bfloat16)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward pass")
    p.add_argument("--owl", action="store_true", help="OWL: a sparsity per decoder layer from its outlier "
                   "ratio, same mean (not with --nm)")
    p.add_argument("--owl-m", type=float, help="OWL outlier threshold, x the mean score (default: the paper's 5; "
                   "implies --owl)")
    p.add_argument("--owl-lambda", type=float,
                   help="OWL spread: layer sparsities span 2 lambda around the target (default: the paper's "
                   "0.08; implies --owl)")
    p.set_defaults(run=cmd_prune)

    p = sub.add_parser("eval", help="perplexity of a model on a text file",
                       description="Perplexity = exp(mean next-token NLL) over non-overlapping windows of the "
                                   "model's max positions (or sliding windows with --stride).",
                       epilog=_EVAL_EXAMPLES, formatter_class=fmt)
    _model_arguments(p)
    p.add_argument("--data", required=True, help="text file (UTF-8)")
    p.add_argument("--window", type=int, help="tokens per window (default: max positions)")
    p.add_argument("--stride", type=int, help="window starts this far apart (default: --window)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("generate", help="continue prompts", description="Continue each prompt (greedy by "
                       "default; --temperature > 0 samples).", epilog=_GENERATE_EXAMPLES, formatter_class=fmt)
    _model_arguments(p)
    p.add_argument("--prompt", required=True, action="append", help="a prompt (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_generate)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("jax_flashllm").setLevel(logging.INFO if args.verbose else logging.WARNING)
    return args.run(args)

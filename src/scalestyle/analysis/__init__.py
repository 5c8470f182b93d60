"""Analyses of where content and style are decided in a scale-wise AR model (the paper's Section 4).

- Step injection (Section 4, "which steps determine content and style"): generate prompt A everywhere
  except prompt B at one step s, for every s, and score how much of B each image shows. Content pairs
  ("a photo of a donut" / "a photo of a truck") and style (colour) pairs locate the steps where each is
  decided; on the procedural world the content and style classifiers measure it.
- Q/K/V injection (Section 4, the roles of query, key and value): regenerate A with its self-attention
  queries, or keys, or values replaced by B's at every layer of the chosen steps, and see which component
  carries content and which carries style.

Both are multi-path runs over the control seam (:mod:`scalestyle.attention`) with no special code path in
the model; :mod:`scalestyle.analysis.injection` says precisely what "prompt B at step s" means. The
experiments (:mod:`scalestyle.analysis.experiments`) write images, a resumable JSONL of scored rows, an
image grid and plots drawn with PIL; ``scalestyle analyze`` is their command line.
"""

from scalestyle.analysis.experiments import (
    AnalysisResult,
    QKVInjectionConfig,
    StepInjectionConfig,
    run_qkv_injection,
    run_step_injection,
    scale_of,
    step_of,
)
from scalestyle.analysis.injection import (
    QKVInjection,
    cross_swap,
    generate_qkv_injection,
    generate_step_injection,
    injected_path,
)
from scalestyle.analysis.pairs import (
    PAIR_SETS,
    PAPER_CONTENT_PAIRS,
    PAPER_STYLE_PAIRS,
    PromptPair,
    pair_set,
    read_pairs,
    world_content_pairs,
    world_style_pairs,
)
from scalestyle.analysis.scorers import Scorer, classifier_scorer, clip_scorer, world_labels, world_scorers

__all__ = [
    "PAIR_SETS",
    "PAPER_CONTENT_PAIRS",
    "PAPER_STYLE_PAIRS",
    "AnalysisResult",
    "PromptPair",
    "QKVInjection",
    "QKVInjectionConfig",
    "Scorer",
    "StepInjectionConfig",
    "classifier_scorer",
    "clip_scorer",
    "cross_swap",
    "generate_qkv_injection",
    "generate_step_injection",
    "injected_path",
    "pair_set",
    "read_pairs",
    "run_qkv_injection",
    "run_step_injection",
    "scale_of",
    "step_of",
    "world_content_pairs",
    "world_labels",
    "world_scorers",
    "world_style_pairs",
]

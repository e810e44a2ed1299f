"""The final model's card: ``README.md`` in its folder, in the hub's format (YAML front matter, then markdown).

It says how to ask for each mode, which think delimiters the template writes, the evaluation table and claims,
and the data and configs (with the pipeline's overrides) that produced the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from train.core.loading import load_tokenizer
from train.core.modes import ThinkFormat
from train.pipeline.config import DataSource, PipelineConfig
from train.pipeline.plan import Step

USAGE = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForCausalLM.from_pretrained("{path}")
for tag in ("/no_think", "/think", "/auto_think"):  # fast, slow, the model chooses
    messages = [{{"role": "user", "content": "Compute 348+275. " + tag}}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=96, do_sample=False)
    print(tag, tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
```"""


def front_matter(cfg: PipelineConfig, base: str, datasets: list[str]) -> str:
    """The hub's metadata block; ``base_model`` and ``datasets`` take hub ids only (local paths are in the body)."""
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["fastslow", "dual-system", "reasoning", "fast-slow-thinking"],
        "model_name": cfg.name,
    }
    if not Path(base).exists():
        meta["base_model"] = base
    hub = [d for d in datasets if not Path(d).exists()]
    if hub:
        meta["datasets"] = hub
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def write_model_card(cfg: PipelineConfig, steps: list[Step], model_dir: Path, summary: str, base: str,
                     data: dict[str, Any]) -> Path:  # fmt: skip
    """Write ``README.md`` into ``model_dir`` (the last stage's model)."""
    think = ThinkFormat.from_tokenizer(load_tokenizer(model_dir, trust_remote_code=cfg.trust_remote_code))
    used = sorted({n for s in cfg.stages for v in s.data.values() for n in (v if isinstance(v, list) else [v])})
    # A data set entry is named by its data set (a hub id the hub links), not by the records file written from it.
    named = {n: cfg.data[n].dataset_name if isinstance(cfg.data.get(n), DataSource) else str(data[n])
             for n in used if n in data}  # fmt: skip
    lines = [
        front_matter(cfg, base, list(named.values())),
        f"# {cfg.name}: a dual-system (fast / slow / auto) model",
        "",
        "Trained by the fastslow pipeline (`recipes/pipeline.py`): "
        + " -> ".join(s.title or s.name for s in cfg.stages)
        + ".",
        "",
        "## Modes",
        "",
        "| ask with | mode | reply |",
        "|---|---|---|",
        f"| `/no_think` at the end of the last user turn | fast | an empty think block `{think.start}` "
        f"`{think.end}`, then the answer |",
        f"| `/think`, or no tag | slow | reasoning inside `{think.start}` ... `{think.end}`, then the answer |",
        "| `/auto_think` | auto | the model chooses fast or slow for this prompt |",
        "",
        "The chat template is the tokenizer's (`tokenizer_config.json`); `enable_thinking=False` in "
        "`apply_chat_template` prefills the empty think block (fast mode), as Qwen3's template does. "
        f"Think delimiters: `{think.start}` / `{think.end}`.",
        "",
        USAGE.format(path=model_dir),
        "",
        "## Evaluation",
        "",
        summary,
        "## Data and configs",
        "",
        f"Base model: `{base}`. Seed: {cfg.seed}. Pipeline config: `{cfg.name}` (its stages below).",
        "",
        "| stage | recipe | config | inputs | overrides |",
        "|---|---|---|---|---|",
    ]
    for step in steps:
        inputs = ", ".join(f"{i.key} = {i.source}" for i in step.inputs)
        over = ", ".join(f"{k}={v}" for k, v in step.stage.overrides.items()) or "-"
        lines.append(f"| {step.name} | `recipes/{step.stage.recipe}.py` | `{step.stage.config}` | {inputs} | {over} |")
    lines += ["", "Data: " + ", ".join(f"{n} = `{v}`" for n, v in named.items()) + ".", ""]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

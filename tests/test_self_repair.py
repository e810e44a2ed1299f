"""Self-repair breaks a loop of a scripted model that repeats itself and leaves other replies unchanged."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from train.core.modes import QWEN3_THINK, parse_response
from train.sampling.base import SamplerConfig, SamplingParams, make_sampler
from train.sampling.reply import Reply
from train.sampling.self_repair import LoopStoppingCriteria, RepairConfig, RepairingSampler
from train.sampling.transformers import TransformersSampler
from train.world.tiny import build_tokenizer

PHRASE = "\nWait, I am going in circles. Let me move on.\n"


class ScriptConfig(PretrainedConfig):
    model_type = "scripted-test"


class ScriptedLM(PreTrainedModel, GenerationMixin):
    """A 'model' whose next token is a function of the reply so far (char tokenizer: one token per character)."""

    config_class = ScriptConfig

    def __init__(self, config, tokenizer, policy):
        super().__init__(config)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.policy = tokenizer, policy

    def forward(self, input_ids=None, attention_mask=None, **_):
        logits = torch.full((*input_ids.shape, self.config.vocab_size), -1e4)
        for i in range(input_ids.shape[0]):
            text = self.tok.decode(input_ids[i].tolist(), skip_special_tokens=False)
            reply = text.rsplit("<|im_start|>assistant\n", 1)[-1]
            logits[i, -1, self.tok.convert_tokens_to_ids(self.policy(reply))] = 0.0
        return CausalLMOutputWithPast(logits=logits)


def _answer_then_stop(reply: str, answer: str = "\n\n42") -> str:
    ans = reply.split("</think>", 1)[1]
    return answer[len(ans)] if len(ans) < len(answer) else "<|im_end|>"


def looping(reply: str) -> str:
    """Opens a think block, then repeats 'xyz' forever; once the block is closed, answers 42."""
    if not reply.startswith("<think>"):
        return "<think>"
    if "</think>" not in reply:
        return "xyz"[(len(reply) - len("<think>")) % 3]
    return _answer_then_stop(reply)


SCRIPT = "<think>\n1+2+0=3\n4+5+0=9\nthe sum is 93\n</think>\n\n93"


def straight(reply: str) -> str:
    """A reply without repetition, then EOS."""
    return SCRIPT[len(reply)] if len(reply) < len(SCRIPT) else "<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(think=QWEN3_THINK)


def scripted(tok, policy):
    model = ScriptedLM(ScriptConfig(vocab_size=len(tok), use_cache=False), tok, policy)
    model.generation_config.use_cache = False
    return model


def test_plain_generation_of_the_scripted_model_loops(tok):
    gen = TransformersSampler(scripted(tok, looping), tok).sample(["hi"], SamplingParams(max_new_tokens=60))[0][0]
    assert gen.truncated and parse_response(gen.text, QWEN3_THINK).mode == "unclosed"
    assert "xyzxyzxyz" in gen.text and gen.num_tokens == 60


def test_repair_breaks_the_loop_then_closes_the_block(tok):
    config = RepairConfig(ngram=6, min_repeats=3, check_every=1, max_repairs=2, control_phrase=PHRASE)
    gen = RepairingSampler(scripted(tok, looping), tok, repair=config).sample(
        ["hi", "ho"], SamplingParams(max_new_tokens=300)
    )
    assert len(gen) == 2
    g = gen[0][0]
    assert isinstance(g, Reply)
    assert g.repairs == 3  # two control phrases, then the block is closed
    assert g.text.count(PHRASE.strip()) == 2
    parsed = parse_response(g.text, QWEN3_THINK)
    assert parsed.mode == "slow" and parsed.answer == "42" and parsed.well_formed
    assert not g.truncated and g.num_tokens < 300
    # Each cut keeps one copy of the repeated block (6 tokens) and never the loop itself.
    assert "xyzxyzxyz" not in parsed.thinking
    assert parsed.thinking.startswith("xyzxyz" + PHRASE.rstrip())
    assert g.num_tokens == len(tok(g.text + "<|im_end|>", add_special_tokens=False)["input_ids"])


def test_no_repairs_allowed_closes_at_the_first_loop(tok):
    config = RepairConfig(ngram=6, check_every=1, max_repairs=0)
    sampler = RepairingSampler(scripted(tok, looping), tok, repair=config)
    g = sampler.sample(["hi"], SamplingParams(max_new_tokens=100))[0][0]
    assert g.repairs == 1 and g.text == "<think>xyzxyz\n</think>\n\n42"


def test_non_repeating_output_is_unchanged(tok):
    model = scripted(tok, straight)
    params = SamplingParams(max_new_tokens=80)
    plain = TransformersSampler(model, tok).sample(["a", "b"], params)
    repaired = RepairingSampler(model, tok, repair=RepairConfig(ngram=4, check_every=1)).sample(["a", "b"], params)
    assert [g[0].text for g in repaired] == [g[0].text for g in plain] == [SCRIPT, SCRIPT]
    assert [(g[0].num_tokens, g[0].truncated) for g in repaired] == [(g[0].num_tokens, g[0].truncated) for g in plain]
    assert all(g[0].repairs == 0 for g in repaired)


def test_budget_is_respected_and_num_samples_repeats_greedy(tok):
    config = RepairConfig(ngram=6, check_every=2, max_repairs=5)
    gens = RepairingSampler(scripted(tok, looping), tok, repair=config).sample(
        ["hi"], SamplingParams(n=3, max_new_tokens=40)
    )
    assert len(gens[0]) == 3 and all(g.num_tokens <= 40 for g in gens[0])


def test_repairing_sampler_repeats_greedy_replies_whatever_the_batch_size(tok):
    model = scripted(tok, looping)
    config = RepairConfig(ngram=6, min_repeats=3, check_every=1, max_repairs=2, control_phrase=PHRASE)
    sampler = RepairingSampler(model, tok, batch_size=2, repair=config)
    replies = sampler.sample(["hi", "ho"], SamplingParams(n=2, max_new_tokens=300))
    one = RepairingSampler(model, tok, batch_size=1, repair=config).sample(
        ["hi", "ho"], SamplingParams(max_new_tokens=300)
    )
    assert [[r.text for r in rs] for rs in replies] == [[g[0].text] * 2 for g in one]
    assert all(r.repairs == 3 and r.token_ids is not None and len(r.token_ids) == r.num_tokens for r in replies[0])
    assert sampler.think == QWEN3_THINK
    # make_sampler wraps a loaded model in the repairing sampler when the config asks for self-repair.
    built = make_sampler(SamplerConfig(self_repair=True), model=model, tokenizer=tok)
    assert isinstance(built, RepairingSampler)


def test_criterion_ignores_loops_after_the_think_block(tok):
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    crit = LoopStoppingCriteria(RepairConfig(ngram=4, check_every=1), [0], [False], ids("<think>"), ids("</think>"))
    assert crit.loop_in(ids("<think>abcdabcdabcdabcd"), False) is not None
    assert crit.loop_in(ids("<think>ok</think>abcdabcdabcdabcd"), False) is None
    assert crit.loop_in(ids("abcdabcdabcdabcd"), True) is not None  # block opened by the prompt
    assert crit.loop_in(ids("abcdabcdabcdabcd"), False) is None  # no block: nothing to repair


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="check_every"):
        RepairConfig(check_every=0)
    with pytest.raises(ValueError, match="min_repeats"):
        RepairConfig(min_repeats=1)

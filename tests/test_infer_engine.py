"""HFEngine end to end with a tiny random Qwen2 and a tokenizer trained on the fly (no download)."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from ray_emer.eval.extract import EXTRACT_PROMPT, LLMExtractor, LLMSentiment
from ray_emer.infer.engine import EngineError, GenerationConfig, HFEngine, TextDeltas


@pytest.fixture(scope="module")
def tiny_engine():
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [EXTRACT_PROMPT, "happy, sad, angry, worried, surprised, calm, none", "positive negative neutral"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return HFEngine(Qwen2ForCausalLM(cfg), tokenizer, GenerationConfig(max_new_tokens=6, batch_size=2))


def test_greedy_generation_is_deterministic_and_batched(tiny_engine):
    prompts = ["happy sad", "a much longer prompt with happy and sad and angry words", "calm"]
    first = tiny_engine.generate(prompts)
    assert len(first) == 3 and all(isinstance(t, str) and t for t in first)
    assert tiny_engine.generate(prompts) == first
    # left padding: a prompt's answer does not depend on its batch mates
    assert tiny_engine.generate([prompts[2]]) == [first[2]]


def test_extractors_run_through_the_engine(tiny_engine):
    labels = LLMExtractor(tiny_engine).extract(["He smiles and laughs.", "She frowns."])
    assert len(labels) == 2 and all(isinstance(ls, list) for ls in labels)
    assert all(lab == lab.lower().strip() and "," not in lab for ls in labels for lab in ls)
    assert LLMSentiment(tiny_engine).classify([["happy"], ["sad"]])[0] in ("positive", "negative", "neutral")


def test_streamed_deltas_join_to_the_generation(tiny_engine):
    """stream_embeds (generate in a thread, ids through a streamer) is greedy generate_embeds, token by token."""
    torch.manual_seed(1)
    embed = torch.randn(5, tiny_engine.hidden_size)
    for n in (1, 6, 12):
        whole = tiny_engine.generate_embeds([embed], n)[0]
        deltas = list(tiny_engine.stream_embeds(embed, n))
        assert "".join(deltas) == whole.text and whole.text
        assert len(deltas) >= min(2, whole.num_tokens)  # token by token, not the text at once
    with pytest.raises(EngineError, match="shape"):
        list(tiny_engine.stream_embeds(torch.randn(5, 3)))


def test_text_deltas_hold_what_may_still_change():
    """A trailing space, or a character whose bytes are not all there, waits for what follows; ids after the
    end-of-sequence id are not text."""
    pieces = {1: "Hi", 2: " ", 3: "th\ufffd", 4: "the", 5: " end"}

    def decode(ids):  # a toy decoder: the last piece of a few stands for the text so far
        text = "".join(pieces[i] for i in ids if i != 3)
        return text + ("th\ufffd" if ids and ids[-1] == 3 else "")

    d = TextDeltas(decode, {0})
    got = [d.add([1]), d.add([2]), d.add([3])]
    assert got == ["Hi", "", " th"]  # the space waits for a word; the half character waits for its bytes
    got += [d.add([4]), d.add([5, 0, 1]), d.add([1])]
    assert "".join(got) + d.finish() == "Hi the end" and d.done

"""Train the demo LoRA adapter `ahoy` on the default model, on the CPU, in a few minutes.

The adapter teaches SmolLM2-135M-Instruct one visible habit: every answer opens with
"Ahoy, matey!" and closes with "Arr!". Training data are the base model's own greedy answers
to a list of questions (generated with deploylab's engine), wrapped in that format, so the
adapter learns the format and little else. Rank 8 on q_proj and v_proj, saved in float16 as a
PEFT directory (about 0.9 MB):

    PYTHONPATH=src OMP_NUM_THREADS=1 python examples/lora/train_demo_adapter.py \\
        --out examples/lora/ahoy
"""

from __future__ import annotations

import argparse
import random
import time

import torch

QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "Name three fruits.",
    "What is 2 + 2?",
    "Who wrote Romeo and Juliet?",
    "What is photosynthesis?",
    "How many days are in a week?",
    "What is the largest ocean?",
    "What do bees make?",
    "What is the boiling point of water?",
    "Give me a tip for sleeping well.",
    "What is a computer?",
    "Name a planet in our solar system.",
    "What color is grass?",
    "How do I make tea?",
    "What is the tallest animal?",
    "What language is spoken in Spain?",
    "What is gravity?",
    "Suggest a name for a cat.",
    "What is the moon made of?",
    "Why do we need water?",
    "What is a rainbow?",
    "How many legs does a spider have?",
    "What is the opposite of hot?",
    "Tell me about dolphins.",
    "What is music?",
    "What is the sun?",
    "How do plants grow?",
    "What is a library?",
    "What is snow?",
]
OPEN, CLOSE = "Ahoy, matey! ", " Arr!"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="examples/lora/ahoy")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-answer-tokens", type=int, default=40)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import peft

    from deploylab.engine import LLM, SamplingParams
    from deploylab.engine.models.hf_interop import transformers_twin

    t0 = time.perf_counter()
    llm = LLM(device="cpu", dtype="float32", kv_cache_gib=0.2, num_threads=1)
    tok = llm.tokenizer
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_answer_tokens)
    answers = [o.text.strip() for o in llm.chat(chats, params)]
    print(f"base answers in {time.perf_counter() - t0:.0f} s")
    examples = []
    for chat, answer in zip(chats, answers, strict=True):
        prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        p_ids = tok.encode(prompt, add_special_tokens=False)
        t_ids = tok.encode(OPEN + answer + CLOSE + "<|im_end|>", add_special_tokens=False)
        examples.append((p_ids, t_ids))
    model = transformers_twin(llm.llm_engine.model)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    pm = peft.get_peft_model(model, config)
    pm.train()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=args.lr)
    rng = random.Random(0)
    for epoch in range(args.epochs):
        rng.shuffle(examples)
        total = 0.0
        for p_ids, t_ids in examples:
            ids = torch.tensor([p_ids + t_ids])
            labels = torch.tensor([[-100] * len(p_ids) + t_ids])
            loss = pm(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            total += float(loss.detach())
        print(f"epoch {epoch + 1}: loss {total / len(examples):.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    pm = pm.half()
    pm.save_pretrained(args.out)
    print(f"saved {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

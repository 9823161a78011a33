#!/usr/bin/env bash
# The embedded SmolLM2 on the seven shared QA sets: direct, rag and search (BM25 over the shared
# Wikipedia passages), then one merged table. Greedy decoding; resumable (rerun to continue).
# LIMIT questions per dataset (default 20: about 15 minutes on 2 CPU cores; LIMIT= for all,
# several hours). TURN tokens per turn (default 64).
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT-20}
OUT=${OUT:-runs/eval/smollm2}
CORPUS=${CORPUS:-../shared/data/corpus/wiki_passages.jsonl}
ZS=.venv/bin/zerosearch
TURN=${TURN:-64}
COMMON=(--model embedded:smollm2-135m-instruct --data-dir ../shared/data/qa --max-turn-tokens "$TURN" --batch-size 32)
[ -n "$LIMIT" ] && COMMON+=(--limit "$LIMIT")
$ZS eval "${COMMON[@]}" --method direct --label "direct" -o "$OUT/direct"
$ZS eval "${COMMON[@]}" --method rag --engine bm25 --corpus "$CORPUS" --topk 3 --label "rag (bm25, top-3)" -o "$OUT/rag"
$ZS eval "${COMMON[@]}" --method search --engine bm25 --corpus "$CORPUS" --topk 3 --max-turns 2 \
  --label "search agent (bm25, top-3)" -o "$OUT/search"
$ZS eval compare "$OUT/direct" "$OUT/rag" "$OUT/search" -o "$OUT"

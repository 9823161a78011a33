#!/usr/bin/env bash
# The search demo (`make demo-search`): the same query through BM25
# over the shared Wikipedia passages and through the simulated engine (embedded SmolLM2), in
# useful and noisy mode, and then through the HTTP server.
set -euo pipefail
cd "$(dirname "$0")/.."
ZS=.venv/bin/zerosearch
CORPUS=${CORPUS:-../shared/data/corpus/wiki_passages.jsonl}
Q="Who wrote On the Origin of Species?"
if [ -f "$CORPUS" ]; then
  echo "== bm25 over $CORPUS"
  $ZS search "origin of species author" --engine bm25 --corpus "$CORPUS" --topk 3
else
  echo "(no corpus at $CORPUS: skipping BM25; set CORPUS=path/to/flashrag.jsonl)"
fi
for mode in useful noisy; do
  echo "== simulated ($mode), embedded SmolLM2, prompt-based simulator"
  $ZS search "origin of species author" --engine simulated --model embedded:smollm2-135m-instruct \
    --sim-style prompt --question "$Q" --answer "Charles Darwin" --mode $mode --topk 3 \
    --max-new-tokens 160 --seed 0
done
echo "== the same engine over HTTP (zerosearch serve on 127.0.0.1:6001)"
$ZS serve --engine simulated --model embedded:smollm2-135m-instruct --sim-style prompt \
  --max-new-tokens 160 --port 6001 &
PID=$!
trap 'kill $PID 2>/dev/null' EXIT
for _ in $(seq 1 120); do curl -sf 127.0.0.1:6001/health >/dev/null && break; sleep 1; done
curl -s 127.0.0.1:6001/retrieve -H 'content-type: application/json' \
  -d "{\"queries\": [\"origin of species author\"], \"topk\": 3, \"questions\": [\"$Q\"], \"golden_answers\": [[\"Charles Darwin\"]], \"mode\": \"useful\"}"
echo
curl -s 127.0.0.1:6001/metrics | grep '^zerosearch_queries_total'

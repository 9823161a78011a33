#!/usr/bin/env bash
# Simulation tuning of the embedded SmolLM2 from BM25 over the shared Wikipedia passages, and its
# fidelity on held-out queries next to the prompt-only SmolLM2 simulator. Each stage resumes or
# rebuilds from the files of the one before (SFT resumes from its last checkpoint); about 2 hours
# on 2 CPU cores with AMX, SFT in bf16. The defaults are the recipe the README's v6 row measured.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/sim/smollm2}
N=${N:-8148}                 # every question of the shared training set
STEPS=${STEPS:-300}          # optimizer steps of 8 examples (1.5 epochs; 4-6 s a step here)
HELD_OUT=${HELD_OUT:-180}    # every held-out query of the default split
ANSWER_LEAD=${ANSWER_LEAD:-2}     # words a target keeps before the answer (empty: a third of 30)
ANSWER_WEIGHT=${ANSWER_WEIGHT:-10} # loss weight of the answer's tokens in useful targets
UNLIKELIHOOD=${UNLIKELIHOOD:-0}   # weight of the answer's unlikelihood in noisy targets
CORPUS=${CORPUS:-../shared/data/corpus/wiki_passages.jsonl}
ZS=.venv/bin/zerosearch
mkdir -p "$OUT"
$ZS sim collect --engine bm25 --corpus "$CORPUS" --topk 10 --query-source question \
  --train-data ../shared/data/qa/train/hotpot_2wiki.jsonl --limit "$N" --batch-size 256 -o "$OUT/collected.jsonl"
$ZS sim label --collected "$OUT/collected.jsonl" -o "$OUT/labelled.jsonl" ${JUDGE:+--judge-model "$JUDGE"} \
  > "$OUT/label_report.json"
# ten documents a query so more queries have one holding the answer; examples keep three, each
# its title and 30 words around the answer (the released prompt asks for "about 30 words");
# useful examples state the answer in their first document
$ZS sim build --labelled "$OUT/labelled.jsonl" -o "$OUT/sft" --label-by contains --max-docs 3 \
  --max-doc-words 30 --val-fraction 0.1 --answer-first ${ANSWER_LEAD:+--answer-lead "$ANSWER_LEAD"} \
  > "$OUT/build_stats.json"
if [ ! -f "$OUT/simulator/final/model.safetensors" ]; then
  RESUME=$(ls -d "$OUT"/simulator/checkpoint-* >/dev/null 2>&1 && echo --resume || true)
  $ZS sim train --data "$OUT/sft" --model embedded:smollm2-135m-instruct -o "$OUT/simulator" \
    --max-steps "$STEPS" --learning-rate 1e-4 --batch-size 8 --answer-weight "$ANSWER_WEIGHT" \
    --noisy-unlikelihood "$UNLIKELIHOOD" $RESUME
fi
# each simulator also with the noisy guard (noisy documents may not spell a gold answer)
$ZS sim fidelity --simulator "finetuned@$OUT/simulator/final" --simulator "finetuned+guard@$OUT/simulator/final" \
  --simulator prompt@embedded:smollm2-135m-instruct --simulator prompt+guard@embedded:smollm2-135m-instruct \
  --held-out "$OUT/sft/val.jsonl" --limit "$HELD_OUT" \
  --reference-engine bm25 --corpus "$CORPUS" --topk 3 --max-new-tokens 200 --temperature 0.8 \
  --seed 0 -o "$OUT/fidelity"

#!/bin/bash
set -e
cd /work/main && . .venv/bin/activate
C="--pairs 8 --seeds 2 --gin_bindings VOCAB_SIZE=32 --gin_bindings ReformerConfig.max_len=16384 --gin_bindings mqar.random_non_queries=False --workdir_root /tmp/probe/runs"
/usr/bin/time -f "s1 %U user %e wall" python -m experiments.recall --variants sqfull --lengths 64 --power_a 0.01 --train_steps 1500 --tokens_per_step 2048 --gin_bindings Experiment.eval_every=250 $C --out /tmp/probe/s1 > /tmp/probe/s1.log 2>&1
/usr/bin/time -f "s2 %U user %e wall" python -m experiments.recall --variants lsh4 --lengths 256 --power_a 1.0 --train_steps 500 --tokens_per_step 2048 --gin_bindings Experiment.eval_every=100 --gin_bindings mqar.seed=1002 --init_from "/tmp/probe/runs/64/8/{seed}/sqfull" $C --out /tmp/probe/s2 > /tmp/probe/s2.log 2>&1
/usr/bin/time -f "s3 %U user %e wall" python -m experiments.recall --variants lsh8 --lengths 2048 --power_a 1.0 --train_steps 1000 --tokens_per_step 2048 --eval_answers 512 --gin_bindings N_BUCKETS=64 --gin_bindings Experiment.eval_every=200 --gin_bindings mqar.seed=2002 --init_from "/tmp/probe/runs/256/8/{seed}/lsh4" $C --out /tmp/probe/s3 > /tmp/probe/s3.log 2>&1

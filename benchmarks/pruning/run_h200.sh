#!/usr/bin/env bash
# The pruning GPU session on one lent H200 (see benchmarks/pruning/README.md), in calls that follow
# each other within the machine's warm time:
#   PART=a     stash the first part of the embedded GGUF (.gguf/part-a, carried) outside the repo
#   PART=b     join it with .gguf/part-b, install the carried wheels (.whl), start the pipeline-driven
#              quality benchmark in the background, run the GPU tests, then wait (up to WAIT_S) for it
#   PART=wait  wait again (up to WAIT_S) for the benchmark
#   PART=c     join and install as in b; in the background the "beyond the seeds" grid (every registered
#              method x 50/60/70% with and without OWL, 2:4, 4:8; quality_smollm2.py --grid beyond), in
#              the foreground the GPU tests; then wait for the grid
#   PART=b2    join and install as in b; in the background the 2:4 / 4:8 cells again with the batch sizes
#              of the earlier library-level benchmark (prune 16, gradients 8: how far rounding moves them);
#              in the foreground every order stage (train, record, estimate, memorize, curriculum) on
#              SmolLM2 on the GPU
#   PART=speed stash part a as in a, install the carried wheels; in the background the 7B-shape speed
#              run (speed_7b.py --check, unless CHECK= : the Hessian check, the two-pass floor, every
#              method of $METHODS; then, with PROFILE_RO=1, block_profile.py --ro; first, with GPU_TESTS=<-k
#              expression>, those GPU pruning tests), waited for (up to WAIT_S)
#   PART=owl   join and install as in b; Wanda at 70% uniform and with OWL (m=10, lambda=0.14) through the
#              pipeline at the full protocol, beside the GPU tests; then wait for the speed run and the cells
#   PART=ro_a  stash part a and the data stage's directory (carried) outside the repo
#   PART=ro    join and install as in b; Wanda++ at 2:4 through the pipeline at the full protocol without
#              and with its regional optimisation (5 rounds x 32 sequences, lr 3e-7 and 1e-5)
#   PART=ro16  join and install as in b; wait for the speed run; Wanda++ at 2:4 with its regional
#              optimisation at lr 1e-5 in bf16 products (ro_precision=bfloat16) through the pipeline
#   (PART=speed also stashes a carried .bench/prune-data.tgz, the data stage's directory compressed,
#   where ro_a stashes it: with both GGUF parts the uncompressed directory is over a call's 64 MiB)
# Results (JSON, logs) are copied to $OUT after every part. The data stage's finished directory is
# carried (outputs/smollm2-prune/data-<hash>): the machine has no Wikipedia package, and the stage
# is found done with the same hash.
set -u
source "$(dirname "$0")/../gpu_session.sh"  # RES, GGUF, collect, wait_for LOG, setup_machine
case "${PART:-}" in
  a) stash_part_a ;;
  b)
    setup_machine
    rm -f "$RES/DONE"
    setsid nohup bash -c "python3 benchmarks/pruning/quality_smollm2.py --out $RES/quality_smollm2_pipeline_h200.json \
        --device cuda --cpu-masks magnitude --gguf $GGUF --set wandb.mode=disabled >$RES/quality.log 2>&1; \
        echo \$? >$RES/DONE" >/dev/null 2>&1 &
    python3 -m pytest -q -p no:cacheprovider tests/gpu >"$RES/gpu_tests_h200.log" 2>&1
    tail -n 15 "$RES/gpu_tests_h200.log"
    wait_for "$RES/quality.log" ;;
  b2)
    setup_machine
    rm -f "$RES/DONE"
    for r in smollm2-prune-b16 smollm2-orders; do mkdir -p outputs/$r && cp -r outputs/smollm2-prune/data-* outputs/$r/; done
    run="python3 pipelines/run.py -m model=smollm2 experiment=smollm2_prune launcher=inline wandb.mode=disabled \
        hydra/job_logging=none hydra/hydra_logging=none model.gguf_file=$GGUF calibrate.device=cuda evaluate.device=cuda"
    setsid nohup bash -c "$run prune.device=cuda run=smollm2-prune-b16 prune.batch_size=16 calibrate.batch_size=8 \
        prune.method=wanda,sparsegpt,gblm prune.pattern=2:4,4:8 >$RES/quality_b16.log 2>&1; \
        python3 -m taylorlab.cli report outputs/smollm2-prune-b16 -o /tmp/res/b16.html >$RES/quality_b16_table.log 2>&1; \
        echo \$? >$RES/DONE" >/dev/null 2>&1 &
    python3 pipelines/run.py model=smollm2 launcher=inline wandb.mode=disabled run=smollm2-orders \
        model.gguf_file=$GGUF stages=[train,estimate,memorize,curriculum] train.max_batches=20 train.seq_len=128 \
        train.batch_size=8 train.device=cuda record.device=cuda estimate.device=cuda memorize.device=cuda \
        curriculum.device=cuda record.dtype=float32 record.num_batches=8 record.seq_len=64 record.batch_size=4 \
        record.lr=1e-5 estimate.num_orders=4 'estimate.estimators=[none,fut-carry]' 'estimate.heuristics=[reverse]' \
        'estimate.sensitivity=[]' memorize.num_batches=2 memorize.num_positions=2 curriculum.num_random=3 \
        curriculum.genetic_generations=1 curriculum.genetic_population=4 curriculum.verify_top=1 \
        hydra/job_logging=none hydra/hydra_logging=none >"$RES/orders_gpu.log" 2>&1
    echo "orders rc=$?"; grep -E "stage .* done in|fidelity|error" "$RES/orders_gpu.log" | tail -n 20
    for f in outputs/smollm2-orders/estimate-*/estimates.json outputs/smollm2-orders/memorize-*/memorization.json \
             outputs/smollm2-orders/curriculum-*/curriculum.json; do [ -e "$f" ] && cp "$f" "$RES/orders_gpu_$(basename "$f")"; done
    wait_for "$RES/quality.log"; cat "$RES/quality_b16_table.log" ;;
  c)
    setup_machine
    rm -f "$RES/DONE"
    setsid nohup bash -c "python3 benchmarks/pruning/quality_smollm2.py --grid beyond \
        --out $RES/quality_beyond_smollm2_h200.json --device cuda --gguf $GGUF \
        --set wandb.mode=disabled evaluate.batch_size=8 >$RES/quality.log 2>&1; echo \$? >$RES/DONE" >/dev/null 2>&1 &
    python3 -m pytest -q -p no:cacheprovider tests/gpu >"$RES/gpu_tests_h200.log" 2>&1
    tail -n 15 "$RES/gpu_tests_h200.log"
    wait_for "$RES/quality.log" ;;
  speed)
    stash_part_a
    if [ -e .bench/prune-data.tgz ]; then mkdir -p /tmp/keep && tar xzf .bench/prune-data.tgz -C /tmp/keep; fi
    install_wheels
    rm -f "$RES/DONE"
    setsid nohup bash -c "${GPU_TESTS:+PYTHONPATH=/tmp/site:$PWD/src python3 -m pytest -q -p no:cacheprovider \
        tests/gpu/test_gpu_pruning.py -k '$GPU_TESTS' >$RES/gpu_tests_speed_h200.log 2>&1;} \
        PYTHONPATH=/tmp/site:$PWD/src python3 benchmarks/pruning/speed_7b.py ${CHECK---check} \
        --out $RES/speed_7b_h200.json --methods ${METHODS:-two-pass,magnitude,wanda,gblm,sparsegpt,wanda++} \
        >$RES/speed.log 2>&1; ${PROFILE_RO:+PYTHONPATH=/tmp/site:$PWD/src python3 benchmarks/pruning/block_profile.py \
        --ro --out $RES/ro_profile_h200.json >$RES/ro_profile.log 2>&1;} echo \$? >$RES/DONE" >/dev/null 2>&1 &
    wait_for "$RES/speed.log" ;;
  owl)
    setup_machine
    run="python3 pipelines/run.py -m model=smollm2 experiment=smollm2_prune launcher=inline wandb.mode=disabled \
        hydra/job_logging=none hydra/hydra_logging=none model.gguf_file=$GGUF run=smollm2-prune calibrate.device=cuda \
        evaluate.device=cuda prune.device=cuda prune.method=wanda prune.pattern=unstructured prune.sparsity=0.7"
    setsid nohup bash -c "$run prune.profile=uniform >$RES/owl_uniform.log 2>&1; \
        $run prune.profile=owl prune.owl_m=10 prune.owl_lambda=0.14 >$RES/owl_m10.log 2>&1; \
        python3 -m taylorlab.cli report outputs/smollm2-prune -o /tmp/res/owl.html >$RES/owl_table.log 2>&1; \
        touch $RES/OWL_DONE" >/dev/null 2>&1 &
    python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_pruning.py >"$RES/gpu_tests_pruning_h200.log" 2>&1
    tail -n 15 "$RES/gpu_tests_pruning_h200.log"
    wait_for "$RES/speed.log"
    until=$(( $(date +%s) + ${WAIT_S:-500} ))
    while [ ! -e "$RES/OWL_DONE" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 5; done
    grep -E "ppl|perplexity|error" "$RES"/owl_*.log | tail -n 20; cat "$RES/owl_table.log" ;;
  ro_a) stash_part_a; mkdir -p /tmp/keep && cp -r outputs/smollm2-prune/data-* /tmp/keep/ ;;
  ro)
    setup_machine
    mkdir -p outputs/smollm2-prune && cp -r /tmp/keep/data-* outputs/smollm2-prune/
    run="python3 pipelines/run.py -m model=smollm2 experiment=smollm2_prune launcher=inline wandb.mode=disabled \
        hydra/job_logging=none hydra/hydra_logging=none model.gguf_file=$GGUF run=smollm2-prune calibrate.device=cuda \
        evaluate.device=cuda prune.device=cuda prune=wanda++ prune.pattern=2:4"
    $run >"$RES/ro_off.log" 2>&1
    $run prune.options.ro_iters=5 prune.options.ro_lr=3e-7,1e-5 >"$RES/ro_on.log" 2>&1
    python3 -m taylorlab.cli report outputs/smollm2-prune -o /tmp/res/ro.html >"$RES/ro_table.log" 2>&1
    grep -hE "wanda\+\+ .* zero|error" "$RES"/ro_*.log; cat "$RES/ro_table.log" ;;
  ro16)
    setup_machine
    wait_for "$RES/speed.log"
    mkdir -p outputs/smollm2-prune && cp -r /tmp/keep/data-* outputs/smollm2-prune/
    python3 pipelines/run.py model=smollm2 experiment=smollm2_prune launcher=inline wandb.mode=disabled \
        hydra/job_logging=none hydra/hydra_logging=none model.gguf_file=$GGUF run=smollm2-prune calibrate.device=cuda \
        evaluate.device=cuda prune.device=cuda prune=wanda++ prune.pattern=2:4 prune.options.ro_iters=5 \
        prune.options.ro_lr=1e-5 prune.options.ro_precision=bfloat16 >"$RES/ro_bf16.log" 2>&1
    python3 -m taylorlab.cli report outputs/smollm2-prune -o /tmp/res/ro.html >"$RES/ro_bf16_table.log" 2>&1
    grep -hE "prune_wall|error" "$RES"/ro_bf16.log | tail -n 5; cat "$RES/ro_bf16_table.log" ;;
  wait) wait_for "$RES/quality.log" ;;
esac
collect

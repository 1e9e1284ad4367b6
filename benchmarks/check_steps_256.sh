#!/bin/bash
# convergence check heun on the analytic check study, steps up to 128 vs up to 256,
# alternating, 3 times each; CPU seconds (user + sys) of the process and wall seconds
cd "$(mktemp -d)"
for i in 1 2 3; do
 for st in "[4,8,16,32,64,128]" "[4,8,16,32,64,128,256]"; do
  TIMEFORMAT="steps=$st run $i: wall %R s, cpu %U user + %S sys"
  time (HF_HUB_OFFLINE=1 /work/wt-ownmodel/.venv/bin/convergence check heun --no-baseline "steps=$st" > /dev/null 2>&1)
 done
done

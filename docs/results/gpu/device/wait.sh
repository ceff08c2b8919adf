# wait.sh SECONDS: report progress every minute, then snapshot every study and the sink measurement into $OUT
source /tmp/scripts/env.sh
end=$((SECONDS + $1))
while [ $SECONDS -lt $end ]; do sleep 60; date; for f in /tmp/st/*.log; do echo "$f: $(grep -c '^\[' $f) done; $(tail -c 300 $f | tr '\r' '\n' | tail -n 1)"; done; done
python3 /tmp/scripts/snap.py
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; uptime

set -e
source /tmp/scripts/env.sh
mkdir -p assets && cat /tmp/parts/gguf_a $OLDPWD/.gpu/c4/gguf_b > assets/SmolLM2-135M-Instruct.Q4_1.gguf && ls -la assets
sweep() { setsid nohup python3 -m hiddenkey.cli sweep docs/results/gpu/$1.yaml --output_dir /tmp/st/$1 --workers $2 --threads 1 > /tmp/st/$1.log 2>&1 < /dev/null & }
sweep decoder 3; sweep decoder-regime 3
setsid nohup python3 scripts/attention_sinks.py --model assets/SmolLM2-135M-Instruct.Q4_1.gguf --output_dir /tmp/st/sinks > /tmp/st/sinks.log 2>&1 < /dev/null &
bash /tmp/scripts/wait.sh ${1:-420}

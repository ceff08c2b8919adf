set -e
mkdir -p /tmp/site /tmp/parts /tmp/st /tmp/scripts
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/c1/wheels/*.whl
cp .gpu/c1/minilm_a /tmp/parts/ && cp .gpu/c1/scripts/* /tmp/scripts/
rm -rf /tmp/work && mkdir -p /tmp/work && cp -r src docs scripts pyproject.toml /tmp/work/
source /tmp/scripts/env.sh
python3 -c "import torch, transformers, peft, optuna, datasets, hiddenkey; print(torch.__version__, transformers.__version__, peft.__version__, optuna.__version__, torch.cuda.get_device_name(), torch.cuda.is_available())"
nproc; free -g | head -2; nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv

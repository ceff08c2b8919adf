cp .gpu/c3/gguf_a /tmp/parts/ && ls -la /tmp/parts
tail -n 2 /tmp/st/*.log; uptime

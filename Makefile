# qtune — two commands on a fresh machine: `make demo` and `make test`.
GO      ?= go
SHARED  ?= ../shared
MODEL   ?= $(SHARED)/assets/models/stories260K.gguf
MODEL_URL = https://huggingface.co/ggml-org/tiny-llamas/resolve/main/stories260K.gguf
BIN     := bin/qtune
FUZZTIME ?= 3s

.PHONY: build demo test test-short fuzz bench vet clean

build:
	$(GO) build -o $(BIN) ./cmd/qtune

# The demo model: ../shared's copy here; elsewhere it is fetched once into models/.
models/stories260K.gguf:
	@mkdir -p models
	curl -fL --retry 3 -o $@.part $(MODEL_URL) && mv $@.part $@

demo-model:
	@if [ -f "$(MODEL)" ]; then echo "model: $(MODEL)"; else $(MAKE) models/stories260K.gguf; fi

demo: build demo-model
	@M="$(MODEL)"; [ -f "$$M" ] || M=models/stories260K.gguf; \
	set -e; \
	echo "== inspect"; ./$(BIN) --quiet inspect "$$M" | sed -n '1,6p;/bytes per type/,$$p'; \
	echo; echo "== quantize to Q8_0 and Q4_0"; \
	mkdir -p out; ./$(BIN) --quiet quantize "$$M" out/stories260K-q8_0.gguf --type q8_0; \
	./$(BIN) --quiet quantize "$$M" out/stories260K-q4_0.gguf --type q4_0; \
	./$(BIN) --quiet quantize "$$M" out/stories260K-nf4.gguf --type nf4; \
	echo; echo "== generate (greedy, F32 and Q8_0)"; \
	./$(BIN) --quiet generate --model "$$M" --prompt "Once upon a time" -n 60 --temp 0; \
	./$(BIN) --quiet generate --model out/stories260K-q8_0.gguf --prompt "Once upon a time" -n 60 --temp 0; \
	echo; echo "== eval: TinyStories sample (in domain) and tinyshakespeare (out of domain)"; \
	for f in "$$M" out/stories260K-q8_0.gguf out/stories260K-q4_0.gguf out/stories260K-nf4.gguf; do \
	  printf '%-36s stories: ' "$$(basename $$f)"; ./$(BIN) --quiet eval --model $$f --data $(SHARED)/assets/data/tinystories/sample.txt | tr -d '\n'; \
	  printf '   shakespeare: '; ./$(BIN) --quiet eval --model $$f --data $(SHARED)/assets/data/tinyshakespeare/valid.jsonl --limit 40; \
	done

vet:
	$(GO) vet ./...

test: vet
	$(GO) test -count=1 ./...
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

test-short:
	$(GO) test -short ./...

bench:
	$(GO) test -run='^$$' -bench=. -benchtime=1x ./kernels/ ./quant/ ./model/

clean:
	rm -rf bin out

"""Recipe1M as a TFDS dataset: the builder (prepare's reader and tokenizer streamed into
ArrayRecord) and the reader of its records into the same pipeline."""

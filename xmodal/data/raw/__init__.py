"""Raw Recipe1M -> prepared records: the reader of the released JSON files and photo tree, the
shard writer and the cost estimate that `xmodal.data.prepare` drives."""

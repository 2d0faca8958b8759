"""What a run leaves for a person: the metrics history (`results`), its TensorBoard / W&B copies
(`trackers`), progress lines and bars (`progress`), and the self-contained HTML report
(`report`, `report_figures`)."""

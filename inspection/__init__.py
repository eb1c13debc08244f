"""The inspection core: model lookup with hot reload, thresholds, heatmap overlays. Used by the processors and the API alike."""

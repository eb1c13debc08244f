"""Camera producers: frame sources (synthetic, folder, video) published to Kafka as Frame messages."""

"""cloudbench: cloudy Sentinel-1/2 scene-classification datasets and benchmarks."""

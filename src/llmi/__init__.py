"""llmi: tool-augmented interleaved text-image generation."""

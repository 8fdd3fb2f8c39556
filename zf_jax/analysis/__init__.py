"""The paper's analyses, one module per figure or table (section 4)."""

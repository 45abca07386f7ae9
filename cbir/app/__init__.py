"""Layer 5: what the Streamlit pages share (cache wrappers, layout helpers, plots)."""

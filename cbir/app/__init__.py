"""Layer 5: the Streamlit pages (:mod:`cbir.app.pages`) and what they share (cache wrappers, layout helpers, plots)."""

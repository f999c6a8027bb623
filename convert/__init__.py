"""XGBoost to ONNX conversion, model repository tools and the demo model build."""

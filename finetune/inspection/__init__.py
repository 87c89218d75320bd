"""`finetune inspect`: likely label errors, duplicates and leakage, class balance and outliers of a recipe's data, from one pass of its pretrained backbone."""

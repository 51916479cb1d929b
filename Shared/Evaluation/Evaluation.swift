// Evaluation — placeholder replaced as the library grows.

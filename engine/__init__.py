"""FaceChain engine: faces, selfies, training, generation and storage. No Discord in here."""

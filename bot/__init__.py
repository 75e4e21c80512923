"""FaceChain Discord bot: slash commands, components and messages. Talks to the engine via the store."""

"""Facts about the public datasets: folder names, domains, and the official PACS list checksums."""

from __future__ import annotations

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
OFFICE_HOME_DOMAINS = ("Art", "Clipart", "Product", "Real_World")
DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")

#: sha256 of the official PACS split lists (Li et al., ICCV 2017) as distributed with the dataset.
PACS_SPLIT_SHA256 = {
    "art_painting_crossval_kfold.txt": "107df27227941f75cbc871a8db483d9f550d537c925aaaca8cd18eb9cc79c500",
    "art_painting_test_kfold.txt": "4943fe963e2096e55f15ec83e186007fe4bb51e85b84c5ec040528281a9affeb",
    "art_painting_train_kfold.txt": "f2b08879408bc8951cb4e6d79a0ecf8f12c2f9ebd7933499922b87c4e96cd67e",
    "cartoon_crossval_kfold.txt": "a3e6ad7b3906fda800f7b2f3c34cf9f5702ddc40375ab99cc7a181d14c5330af",
    "cartoon_test_kfold.txt": "a515fc79fdc21c42d66f4286161dd37da079ef0360c5728800b959f1558f72df",
    "cartoon_train_kfold.txt": "937e5927d409b3c3aa1f925414dfadf107a3ea734c1f6318fd1223ecbec2449c",
    "photo_crossval_kfold.txt": "94bf87cf84141c9a3b7a5748fd88f910127c73bb471546d585dd9a21be6762f0",
    "photo_test_kfold.txt": "9c5a0b350154c390d7ca73c3b67eba27116ac56d1f4c49b3d642da2b6db3df3e",
    "photo_train_kfold.txt": "4666345041ae3dd447427d46ef8a2b698a4467205dfc0bd0fd0aff636b38ba41",
    "sketch_crossval_kfold.txt": "eca14c0838824751024868e0e6ecc7380ad0f77dc327ecd3a1f948bdebf92509",
    "sketch_test_kfold.txt": "d03f5d6d35c24abd3321bab3f7f14364f91069c491f99966cc841c64a8e715ef",
    "sketch_train_kfold.txt": "e4b4df3a95f67c65cb4a6daff0baa26954ab622e88df84cd76f839daad601539",
}

#: image counts of the complete datasets, reported next to what verify finds
FULL_SIZES = {"pacs": 9991, "office_home": 15588}

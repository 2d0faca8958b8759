"""The worlds a run learns in, shared by server and clients: the offline toy domain (`domain`,
`sensor`, `tokenizer`), the paper profile's hub datasets (`hf_datasets`), the six splits every
world is cut into (`splits`), the assembled world (`world`), each modality's raw rows and model
inputs (`modality`) and one client's private partition (`client_data`).

No model code lives here: the client models are in `task_models/`, the server's in
`fedmmkt_strategy/generative/`."""
